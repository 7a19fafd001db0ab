"""The web UI's other tabs: extras (upscale), PNG info, gallery (history) and queue."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from brushwork.output import PARAMETERS_KEY, read_png_info
from brushwork.infotext import split_infotext
from brushwork.serve.jobs import JobState
from brushwork.serve.limits import OverLimit
from brushwork.serve.ui import Studio, readable_errors
from brushwork.serve.ui_forms import job_label, queue_html
from brushwork.upscale import add_postprocess_info, plan_size, postprocess_fields

GALLERY_PAGE = 24  # pictures per gallery page
QUEUE_LIMIT = 30  # jobs listed in the queue tab
QUEUE_REFRESH_SECONDS = 1.5
SCALE_MODES = ("Scale by", "Scale to")


@dataclass
class InfoSource:
    """A tab with a picture and its infotext, and buttons sending them to a generation tab."""

    picture: Any
    infotext: Any
    send_txt2img: Any
    send_img2img: Any
    reload: dict[str, Any] | None = None  # the gallery's (re)load event, for the tab's select


@dataclass
class QueueTab:
    timer: gr.Timer


# -- extras ----------------------------------------------------------------------------------------------

def upscale_picture(studio: Studio, image: Image.Image | None, name: str, mode: str, factor: float,
                    width: float | None, height: float | None) -> tuple[Image.Image, str]:
    """(the upscaled picture, what was done as infotext); the picture keeps its own infotext, extended."""
    if image is None:
        raise gr.Error("Upload a picture to upscale.", print_exception=False)
    limits = studio.settings.limits
    if max(image.size) > limits.max_image_side:
        raise OverLimit(f"the picture is {image.width}x{image.height}, over this server's limit of "
                        f"{limits.max_image_side} pixels on a side")
    scale: float | tuple[int, int] = float(factor)
    if mode == SCALE_MODES[1]:
        scale = (int(width or 0), int(height or 0))
    plan = plan_size(image.size, scale)
    for w, h in (plan.resized, plan.final):
        if w * h > limits.max_pixels or max(w, h) > limits.max_image_side:
            raise OverLimit(f"the upscaled picture would be {w}x{h}, over this server's limit of "
                            f"{limits.max_pixels:,} pixels / {limits.max_image_side} on a side")
    result = studio.upscalers.upscale(image, name, scale)
    info = add_postprocess_info(image.info.get(PARAMETERS_KEY), postprocess_fields(name, scale, plan))
    result.info[PARAMETERS_KEY] = info  # Gradio writes a PNG's text chunks from `info`
    return result, info


def extras_tab(studio: Studio) -> None:
    with gr.Row():
        with gr.Column():
            source = gr.Image(label="Picture", type="pil", image_mode=None, sources=["upload", "clipboard"],
                              height=400, elem_id="extras-source")
            names = studio.image_upscalers()
            upscaler = gr.Dropdown(names, value=names[0] if names else None, label="Upscaler")
            mode = gr.Radio(list(SCALE_MODES), value=SCALE_MODES[0], label="Resize")
            factor = gr.Slider(1, 8, value=2, step=0.25, label="Scale by")
            with gr.Row():
                width = gr.Number(1024, precision=0, label="Width (scale to)")
                height = gr.Number(1024, precision=0, label="Height (scale to)")
            run = gr.Button("Upscale", variant="primary", elem_id="extras-run")
        with gr.Column():
            result = gr.Image(label="Result", type="pil", format="png", interactive=False, height=400)
            info = gr.Textbox(label="Info", lines=3, interactive=False)

    @readable_errors
    def upscale(image, name, how, by, w, h):
        return upscale_picture(studio, image, name, how, by, w, h)

    run.click(upscale, inputs=[source, upscaler, mode, factor, width, height], outputs=[result, info])


# -- PNG info ----------------------------------------------------------------------------------------------

def read_infotext(path: str | None) -> tuple[str, dict[str, str]]:
    """(infotext, its fields) of an uploaded picture; a readable note instead when it has none."""
    if not path:
        return "", {}
    infotext, _ = read_png_info(path)
    if not infotext:
        return "This picture carries no generation parameters.", {}
    prompt, negative, params = split_infotext(infotext)
    return infotext, {"Prompt": prompt, "Negative prompt": negative, **params}


def png_info_tab() -> InfoSource:
    with gr.Row():
        with gr.Column():
            picture = gr.Image(label="Picture (PNG, or A1111 JPEG/WebP)", type="filepath", image_mode=None,
                               sources=["upload", "clipboard"], height=400, elem_id="pnginfo-picture")
        with gr.Column():
            infotext = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="pnginfo-text")
            fields = gr.JSON(label="Fields")
            with gr.Row():
                send_txt2img = gr.Button("Send to txt2img")
                send_img2img = gr.Button("Send to img2img")
    picture.change(readable_errors(read_infotext), inputs=picture, outputs=[infotext, fields])
    return InfoSource(picture, infotext, send_txt2img, send_img2img)


# -- gallery -----------------------------------------------------------------------------------------------

def gallery_page(studio: Studio, page: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str, int]:
    """(gallery items, (path, infotext) per item, a page label, the page shown) of one page, newest first."""
    page = max(0, int(page))
    records = studio.jobs.gallery(page=page, per_page=GALLERY_PAGE)
    if not records and page > 0:  # past the end: show the last page there is
        return gallery_page(studio, page - 1)
    items, details = [], []
    for record in records:
        path = studio.jobs.image_path(record.id)
        if path is not None:
            items.append((str(path), f"seed {record.seed}"))
            details.append((str(path), record.infotext))
    label = f"Page {page + 1}" + ("" if records else " — no pictures yet")
    return items, details, label, page


def gallery_tab(studio: Studio) -> InfoSource:
    page = gr.State(0)
    details = gr.State([])
    with gr.Row():
        previous = gr.Button("◀ Newer", size="sm")
        refresh = gr.Button("🔄 Refresh", size="sm", elem_id="gallery-refresh")
        following = gr.Button("Older ▶", size="sm")
        label = gr.Markdown("Page 1")
    grid = gr.Gallery(label="Pictures, newest first", columns=6, height=420, allow_preview=False,
                      interactive=False, elem_id="gallery-grid")
    with gr.Row():
        picture = gr.Image(label="Picture", type="filepath", interactive=False, height=400, elem_id="gallery-picture")
        with gr.Column():
            infotext = gr.Textbox(label="Infotext", lines=6, interactive=False, elem_id="gallery-info")
            with gr.Row():
                send_txt2img = gr.Button("Send to txt2img")
                send_img2img = gr.Button("Send to img2img")

    def load(number: int, delta: int = 0):
        return gallery_page(studio, number + delta)

    outputs = [grid, details, label, page]
    reload = dict(fn=readable_errors(load), inputs=page, outputs=outputs, show_progress="hidden")
    refresh.click(**reload)
    previous.click(readable_errors(lambda number: load(number, -1)), inputs=page, outputs=outputs)
    following.click(readable_errors(lambda number: load(number, +1)), inputs=page, outputs=outputs)

    def show(items: list[tuple[str, str]], event: gr.SelectData):
        if event.index is None or event.index >= len(items):
            return gr.skip(), gr.skip()
        return items[event.index]

    grid.select(show, inputs=details, outputs=[picture, infotext], show_progress="hidden")
    return InfoSource(picture, infotext, send_txt2img, send_img2img, reload=reload)


# -- queue -------------------------------------------------------------------------------------------------

def queue_view(studio: Studio, owner: str, chosen: str | None) -> tuple[str, Image.Image | None, Any]:
    """(the owner's jobs as a table, the preview of their running job, the cancel dropdown)."""
    jobs = studio.jobs.list_jobs(owner=owner, limit=QUEUE_LIMIT)
    preview = None
    running = next((job for job in jobs if job.state is JobState.running), None)
    if running is not None and running.progress.preview_png:
        preview = Image.open(io.BytesIO(running.progress.preview_png))
    open_jobs = [(job_label(job), job.id) for job in jobs if not job.state.finished]
    ids = [job_id for _, job_id in open_jobs]
    choice = chosen if chosen in ids else (ids[0] if ids else None)
    return queue_html(jobs), preview, gr.Dropdown(choices=open_jobs, value=choice)


def queue_tab(studio: Studio, browser: gr.BrowserState) -> QueueTab:
    timer = gr.Timer(QUEUE_REFRESH_SECONDS, active=False)
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.HTML('<p class="bw-empty">No jobs yet.</p>', elem_id="queue-table")
        with gr.Column(scale=2):
            preview = gr.Image(label="Live preview (your running job)", interactive=False, height=300)
    with gr.Row():
        chosen = gr.Dropdown([], value=None, label="Job", scale=3)
        cancel = gr.Button("Cancel job", variant="stop", scale=1)
        interrupt = gr.Button("Interrupt", scale=1)
        skip = gr.Button("Skip", scale=1)
        refresh = gr.Button("🔄 Refresh", scale=1)

    def view(request: gr.Request, browser_id: str, job_id: str | None):
        return queue_view(studio, studio.owner(request, browser_id), job_id)

    def cancel_job(request: gr.Request, browser_id: str, job_id: str | None):
        job = studio.own_job(job_id, studio.owner(request, browser_id))
        if job is None or not studio.jobs.cancel(job.id):
            gr.Info("That job is not yours, or it has already finished.")
        return view(request, browser_id, job_id)

    def stop_running(request: gr.Request, browser_id: str, job_id: str | None, skip_batch: bool = False):
        """Interrupt (or skip a batch of) the running job, when it is the caller's."""
        current = studio.jobs.current()
        if current is None or current.owner != studio.owner(request, browser_id):
            gr.Info("None of your jobs is running.")
        elif skip_batch:
            studio.jobs.skip()
        else:
            studio.jobs.cancel(current.id)
        return view(request, browser_id, job_id)

    def skip_running(request: gr.Request, browser_id: str, job_id: str | None):
        return stop_running(request, browser_id, job_id, skip_batch=True)

    inputs, outputs = [browser, chosen], [table, preview, chosen]
    for event in (timer.tick, refresh.click):
        event(view, inputs=inputs, outputs=outputs, show_progress="hidden", concurrency_limit=None)
    cancel.click(cancel_job, inputs=inputs, outputs=outputs)
    interrupt.click(stop_running, inputs=inputs, outputs=outputs)
    skip.click(skip_running, inputs=inputs, outputs=outputs)
    return QueueTab(timer)
