"""The txt2img and img2img tabs: the form, Generate (submit a job, stream its progress), results, send-to.

Generate is a Gradio generator: it submits the form's Recipe to the job queue, then follows the job
(`JobService.events` wakes it, `JobService.get` reads the state) and yields the progress bar, the
live preview and finally the pictures with their infotext.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from brushwork.engine.samplers import SAMPLERS
from brushwork.errors import BrushworkError
from brushwork.infotext import parse_infotext
from brushwork.recipe import MaskedContent, ResizeMode
from brushwork.serve.jobs import Job, JobService, JobState
from brushwork.serve.ui_control import control_accordion
from brushwork.serve.ui_forms import (
    AUTOMATIC, IMG2IMG_FIELDS, INPAINT_AREAS, MASK_MODES, SAME_SAMPLER, TXT2IMG_FIELDS, error_html,
    form_from_recipe, progress_html, random_seed, recipe_from_form, reuse_seed,
)
from brushwork.serve.ui_studio import Studio, describe
from brushwork.styles import STYLES_NAME

log = logging.getLogger(__name__)

UPDATE_INTERVAL = 0.3  # least seconds between two progress updates sent to the browser
POLL_SECONDS = 1.0  # re-read the job at least this often, even when no event arrives
SEND_FIELDS = {  # what "send to" fills from an infotext (batch and pictures stay as they are; styles are cleared)
    "txt2img": ("prompt", "negative_prompt", "styles", "model", "vae", "sampler", "steps", "cfg_scale", "seed",
                "width", "height", "clip_skip", "hires_enable", "hires_upscaler", "hires_scale", "hires_resize_width",
                "hires_resize_height", "hires_steps", "hires_denoising", "hires_prompt", "hires_negative",
                "hires_sampler"),
    "img2img": ("prompt", "negative_prompt", "styles", "model", "vae", "sampler", "steps", "cfg_scale", "seed",
                "width", "height", "clip_skip", "denoising_strength", "mask_blur", "inpainting_fill", "inpaint_area",
                "inpaint_padding", "mask_mode"),
}


@dataclass
class GenerationTab:
    kind: str
    controls: dict[str, Any] = field(default_factory=dict)  # form name -> component


def follow(jobs: JobService, job_id: str, *, interval: float = UPDATE_INTERVAL, poll: float = POLL_SECONDS) -> Iterator[Job]:
    """The job as it changes, until it has finished (the finished job last).

    A state change is always yielded; progress at most every `interval` seconds.
    """
    last_time, last_state = float("-inf"), None
    while True:
        for _ in jobs.events(job_id, timeout=poll):
            job = jobs.get(job_id)
            if job is None:
                return
            moment = time.monotonic()
            if job.state.finished or job.state is not last_state or moment - last_time >= interval:
                last_time, last_state = moment, job.state
                yield job
            if job.state.finished:
                return
        job = jobs.get(job_id)  # quiet for `poll` seconds: show the state anyway (the ETA moves on)
        if job is None:
            return
        last_time, last_state = time.monotonic(), job.state
        yield job
        if job.state.finished:
            return


def result_items(jobs: JobService, job: Job) -> list[tuple[str, str]]:
    """The job's pictures for a Gallery: (PNG path, caption)."""
    items = []
    for record in job.images:
        path = jobs.image_path(record.id)
        if path is not None:
            items.append((str(path), f"seed {record.seed}"))
    return items


def preview_image(job: Job) -> Image.Image | None:
    data = job.progress.preview_png
    return Image.open(io.BytesIO(data)) if data else None


def generation_tab(studio: Studio, browser: gr.BrowserState, kind: str) -> GenerationTab:
    """The txt2img or img2img tab (`kind`), wired to the queue."""
    tab = GenerationTab(kind)
    c = tab.controls
    with gr.Row():
        with gr.Column(scale=5):
            c["prompt"] = gr.Textbox(label="Prompt", lines=3, placeholder="What to paint", elem_id=f"{kind}-prompt")
            c["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{kind}-negative")
        with gr.Column(scale=1, min_width=220):
            generate = gr.Button("Generate", variant="primary", size="lg", elem_id=f"{kind}-generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", size="sm", elem_id=f"{kind}-interrupt")
                skip = gr.Button("Skip", size="sm", elem_id=f"{kind}-skip")
            _style_picker(studio, c, kind)
            _lora_picker(studio, c, kind)
    with gr.Row():
        with gr.Column(scale=1):
            if kind == "img2img":
                _picture_sources(c)
            _model_controls(studio, c)
            _sampling_controls(studio, c, kind)
            if kind == "txt2img":
                _hires_controls(studio, c)
            else:
                _img2img_controls(c)
            control_names = control_accordion(studio, c, kind)
        with gr.Column(scale=1):
            progress = gr.HTML(elem_id=f"{kind}-progress")
            results = gr.Gallery(label="Results", columns=2, height=480, format="png", interactive=False,
                                 object_fit="contain", buttons=["download", "fullscreen"], elem_id=f"{kind}-results")
            infotext = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"{kind}-info")
    job_id, records, last_seed = gr.State(None), gr.State([]), gr.State(None)

    fields = (TXT2IMG_FIELDS if kind == "txt2img" else IMG2IMG_FIELDS) + control_names
    outputs = [progress, results, infotext, job_id, records, last_seed]

    def run(request: gr.Request, browser_id: str, *values: Any) -> Iterator[dict]:
        owner = studio.owner(request, browser_id)
        form = dict(zip(fields, values))
        try:
            styles = studio.styles() if form.get("styles") else {}  # read now: edits to the file apply
            job = studio.submit(recipe_from_form(form, styles=styles), owner)
        except (BrushworkError, ValidationError) as error:
            gr.Warning(describe(error))
            yield {progress: error_html(describe(error))}
            return
        except Exception as error:
            log.exception("web UI: submitting a %s job failed", kind)
            yield {progress: error_html(f"internal error ({type(error).__name__}); see the server log")}
            return
        yield {progress: progress_html(job), results: [], infotext: "", job_id: job.id}
        shown = None
        for job in follow(studio.jobs, job.id):
            update: dict[Any, Any] = {progress: progress_html(job)}
            if job.progress.preview_png is not None and job.progress.preview_png != shown and not job.state.finished:
                shown = job.progress.preview_png
                update[results] = [(preview_image(job), "preview")]
            if job.state.finished:
                update.update({results: result_items(studio.jobs, job), job_id: None,
                               records: [(record.seed, record.infotext) for record in job.images],
                               infotext: job.images[0].infotext if job.images else ""})
                if job.images:
                    update[last_seed] = job.images[0].seed
                if job.state is JobState.failed:
                    gr.Warning(job.error or "the job failed")
            yield update

    generate.click(run, inputs=[browser, *(c[name] for name in fields)], outputs=outputs,
                   concurrency_limit=None, show_progress="hidden")
    interrupt.click(_interrupter(studio, skip=False), inputs=[browser, job_id], show_progress="hidden")
    skip.click(_interrupter(studio, skip=True), inputs=[browser, job_id], show_progress="hidden")
    results.select(_show_info, inputs=records, outputs=infotext, show_progress="hidden")
    c["random_seed"].click(random_seed, outputs=c["seed"], show_progress="hidden")
    c["reuse_seed"].click(reuse_seed, inputs=last_seed, outputs=c["seed"], show_progress="hidden")
    return tab


def _interrupter(studio: Studio, *, skip: bool):
    """Interrupt (cancel this tab's job) or Skip (drop its running batch): only ever the caller's own job."""

    def act(request: gr.Request, browser_id: str, job_id: str | None) -> None:
        job = studio.own_job(job_id, studio.owner(request, browser_id))
        if job is None or job.state.finished:
            gr.Info("Nothing to stop: this tab has no job in the queue.")
        elif skip:
            current = studio.jobs.current()
            if current is not None and current.id == job.id:
                studio.jobs.skip()
            else:
                gr.Info("Skip applies to a running job; this one is still queued.")
        else:
            studio.jobs.cancel(job.id)

    return act


def _show_info(records: list[tuple[int, str]], event: gr.SelectData) -> str:
    if event.index is None or not records or event.index >= len(records):
        return gr.skip()
    return records[event.index][1]


def _picture_sources(c: dict[str, Any]) -> None:
    """img2img's picture, or the mask painter for inpainting: the open sub-tab decides which is used."""
    c["mode"] = gr.State("img2img")
    with gr.Tabs(elem_id="img2img-sources"):
        with gr.Tab("Picture", id="img2img", elem_id="img2img-picture-tab") as picture_tab:
            c["init_image"] = gr.Image(label="Picture to start from", type="pil", image_mode="RGB", height=360,
                                       sources=["upload", "clipboard"], elem_id="img2img-init")
        with gr.Tab("Inpaint", id="inpaint", elem_id="img2img-inpaint-tab") as inpaint_tab:
            c["inpaint"] = gr.ImageMask(
                label="Paint over what to repaint", type="pil", image_mode="RGBA", height=420, format="png",
                sources=["upload", "clipboard"], transforms=(), layers=False,
                brush=gr.Brush(default_size=24, colors=[("#ffffff", 0.8)], color_mode="fixed"),
                elem_id="img2img-inpaint",
            )
    picture_tab.select(lambda: "img2img", outputs=c["mode"], show_progress="hidden", queue=False)
    inpaint_tab.select(lambda: "inpaint", outputs=c["mode"], show_progress="hidden", queue=False)


def _style_picker(studio: Studio, c: dict[str, Any], kind: str) -> None:
    """A1111's styles: any of the data dir's styles.csv, merged into the prompts when Generate submits the job."""
    names, note = style_choices(studio)
    with gr.Row():
        c["styles"] = gr.Dropdown(names, value=[], multiselect=True, label="Styles", info=note, scale=4,
                                  elem_id=f"{kind}-styles")
        refresh = gr.Button("↻", elem_classes="bw-tool", scale=0, elem_id=f"{kind}-styles-refresh")

    def reload(chosen: list[str] | None) -> Any:
        names, note = style_choices(studio)
        return gr.Dropdown(choices=names, value=[name for name in chosen or [] if name in names], info=note)

    refresh.click(reload, inputs=c["styles"], outputs=c["styles"], show_progress="hidden")


def _lora_picker(studio: Studio, c: dict[str, Any], kind: str) -> None:
    """A1111's LoRA cards, as a list: choosing one adds its `<lora:name:1>` tag to the prompt (edit the weight
    there), and the list is ready for the next one."""
    with gr.Row():
        picker = gr.Dropdown(studio.loras(), value=None, label="LoRA", scale=4, elem_id=f"{kind}-lora",
                             info=None if studio.loras() else "no LoRAs: add files to the models folder's Lora/")
        refresh = gr.Button("↻", elem_classes="bw-tool", scale=0, elem_id=f"{kind}-lora-refresh")

    def insert(name: str | None, prompt: str) -> tuple[Any, str]:
        if not name:
            return gr.Dropdown(value=None), prompt
        return gr.Dropdown(value=None), f"{prompt.rstrip()} <lora:{name}:1>".lstrip()

    picker.input(insert, inputs=[picker, c["prompt"]], outputs=[picker, c["prompt"]], show_progress="hidden")
    refresh.click(lambda: gr.Dropdown(choices=studio.loras(), value=None), outputs=picker, show_progress="hidden")


def style_choices(studio: Studio) -> tuple[list[str], str | None]:
    """(the style names to offer, a note for the picker: why there are none, or what is wrong with the file)."""
    try:
        names = studio.style_names()
    except BrushworkError as error:
        log.warning("web UI: %s", error)
        return [], describe(error)
    if not names:
        return [], f"no styles yet: add a {STYLES_NAME} (name,prompt,negative_prompt) to the server's data folder"
    return names, None


def _model_controls(studio: Studio, c: dict[str, Any]) -> None:
    checkpoints = studio.checkpoints()
    with gr.Row():
        c["model"] = gr.Dropdown(checkpoints, value=checkpoints[0] if checkpoints else None, label="Model",
                                 info=None if checkpoints else "no checkpoints: the built-in model is used", scale=4)
        c["vae"] = gr.Dropdown([AUTOMATIC, *studio.vaes()], value=AUTOMATIC, label="VAE", scale=3)
        refresh = gr.Button("↻", elem_classes="bw-tool", scale=0)

    def reload(model: str | None, vae: str | None) -> tuple[Any, Any]:
        names, vaes = studio.checkpoints(), [AUTOMATIC, *studio.vaes()]
        return (gr.Dropdown(choices=names, value=model if model in names else (names[0] if names else None)),
                gr.Dropdown(choices=vaes, value=vae if vae in vaes else AUTOMATIC))

    refresh.click(reload, inputs=[c["model"], c["vae"]], outputs=[c["model"], c["vae"]], show_progress="hidden")


def _sampling_controls(studio: Studio, c: dict[str, Any], kind: str) -> None:
    limits = studio.settings.limits
    side = min(limits.max_image_side, 2048)
    with gr.Row():
        c["sampler"] = gr.Dropdown(list(SAMPLERS), value="DPM++ 2M", label="Sampler")
        c["steps"] = gr.Slider(1, limits.max_steps, value=min(20, limits.max_steps), step=1, label="Steps",
                                 elem_id=f"{kind}-steps")
    with gr.Row():
        c["width"] = gr.Slider(0, side, value=0, step=8, label="Width", info="0: the model's native size",
                                elem_id=f"{kind}-width")
        c["height"] = gr.Slider(0, side, value=0, step=8, label="Height", info="0: the model's native size",
                                elem_id=f"{kind}-height")
    with gr.Row():
        c["batch_count"] = gr.Slider(1, limits.max_batch, value=1, step=1, label="Batch count")
        c["batch_size"] = gr.Slider(1, min(limits.max_batch, 64), value=1, step=1, label="Batch size")
    with gr.Row():
        c["cfg_scale"] = gr.Slider(0, 30, value=7, step=0.5, label="CFG scale")
        c["clip_skip"] = gr.Slider(1, 12, value=1, step=1, label="Clip skip")
    with gr.Row():
        c["seed"] = gr.Number(-1, precision=0, label="Seed", info="-1: random", scale=4, elem_id=f"{kind}-seed")
        c["random_seed"] = gr.Button("🎲 Random", elem_classes="bw-tool", scale=0, elem_id=f"{kind}-random-seed")
        c["reuse_seed"] = gr.Button("♻", elem_classes="bw-tool", scale=0, elem_id=f"{kind}-reuse-seed")


def _hires_controls(studio: Studio, c: dict[str, Any]) -> None:
    limits = studio.settings.limits
    side = min(limits.max_image_side, 4096)
    with gr.Accordion("Hires. fix", open=False):
        c["hires_enable"] = gr.Checkbox(False, label="Enable hires. fix")
        with gr.Row():
            c["hires_upscaler"] = gr.Dropdown(studio.hires_upscalers(), value="Latent", label="Upscaler")
            c["hires_sampler"] = gr.Dropdown([SAME_SAMPLER, *SAMPLERS], value=SAME_SAMPLER, label="Hires sampler")
        with gr.Row():
            c["hires_scale"] = gr.Slider(1.05, 4, value=2, step=0.05, label="Upscale by")
            c["hires_steps"] = gr.Slider(0, limits.max_steps, value=0, step=1, label="Hires steps",
                                         info="0: as many as the first pass")
            c["hires_denoising"] = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength")
        with gr.Row():
            c["hires_resize_width"] = gr.Slider(0, side, value=0, step=8, label="Resize width to",
                                                info="0: follow 'Upscale by'")
            c["hires_resize_height"] = gr.Slider(0, side, value=0, step=8, label="Resize height to")
        c["hires_prompt"] = gr.Textbox(label="Hires prompt", lines=1, placeholder="empty: the same prompt")
        c["hires_negative"] = gr.Textbox(label="Hires negative prompt", lines=1, placeholder="empty: the same")


def _img2img_controls(c: dict[str, Any]) -> None:
    c["denoising_strength"] = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength")
    c["resize_mode"] = gr.Radio(list(ResizeMode.__args__), value="just resize", label="Resize mode")
    with gr.Accordion("Inpainting", open=True):
        with gr.Row():
            c["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur")
            c["inpaint_padding"] = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels")
        c["mask_mode"] = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], label="Mask mode")
        c["inpainting_fill"] = gr.Radio(list(MaskedContent.__args__), value="original", label="Masked content")
        c["inpaint_area"] = gr.Radio(list(INPAINT_AREAS), value=INPAINT_AREAS[0], label="Inpaint area")
    with gr.Accordion("Outpainting", open=False):
        gr.Markdown("Extend the picture by this many pixels on each side (multiples of 8) and paint the new area.")
        with gr.Row():
            for side in ("left", "right", "top", "bottom"):
                c[f"outpaint_{side}"] = gr.Slider(0, 512, value=0, step=8, label=side.capitalize())


def wire_send_to(studio: Studio, button: gr.Button, infotext: gr.Textbox, picture: Any, target: GenerationTab) -> None:
    """`button` opens `target`'s tab and fills its form from `infotext` (and, for img2img, its picture).

    The tab is opened in the browser, as a click on it would: a Tabs value set from Python sticks, and
    would pull the page back to that tab on later updates.
    """
    names = [name for name in SEND_FIELDS[target.kind] if name in target.controls]
    outputs = [target.controls[name] for name in names]
    tab_buttons = [f"tab-{target.kind}-button"]
    if target.kind == "img2img":
        outputs.append(target.controls["init_image"])
        tab_buttons.append("img2img-picture-tab-button")  # its select event sets the mode to img2img
    clicks = "".join(f"document.getElementById('{button_id}')?.click();" for button_id in tab_buttons)

    def send(text: str, path: str | None) -> list[Any]:
        values = send_values(studio, text, names)
        if values is None:
            return [gr.skip()] * len(outputs)
        if target.kind == "img2img":
            values.append(Image.open(path) if path else gr.skip())
        return values

    button.click(send, inputs=[infotext, picture], outputs=outputs, show_progress="hidden",
                 js=f"(...args) => {{ {clicks} return args; }}")


def send_values(studio: Studio, text: str, names: list[str]) -> list[Any] | None:
    """The values for the components `names`, parsed from an infotext; None (and a warning) if unusable."""
    try:
        recipe, _ = parse_infotext(text or "")
    except BrushworkError as error:
        gr.Warning(describe(error))
        return None
    form = form_from_recipe(recipe, checkpoints=studio.checkpoints(), vaes=studio.vaes())
    return [form[name] if name in form else gr.skip() for name in names]
