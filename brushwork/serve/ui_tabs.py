"""The web UI's other tabs: extras (upscale), PNG info, gallery (history) and queue."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gradio as gr
from PIL import Image

from brushwork.output import PARAMETERS_KEY, read_png_info
from brushwork.infotext import split_infotext
from brushwork.serve.jobs import JobState
from brushwork.serve.limits import OverLimit
from brushwork.serve.ui_forms import job_label, queue_html
from brushwork.serve.ui_studio import Studio, readable_errors
from brushwork.upscale import add_postprocess_info, plan_size, postprocess_fields

GALLERY_PAGE = 24  # pictures per gallery page
QUEUE_LIMIT = 30  # jobs listed in the queue tab
QUEUE_REFRESH_SECONDS = 1.5
QUEUE_WATCH_SECONDS = 600.0  # the queue tab stops updating itself after this long (reopen it to resume)
SCALE_MODES = ("Scale by", "Scale to")
IMAGE_BUTTONS = ["download", "fullscreen"]  # no "share": it would upload the picture elsewhere


@dataclass
class InfoSource:
    """A tab with a picture and its infotext, and buttons sending them to a generation tab."""

    picture: Any
    infotext: Any
    send_txt2img: Any
    send_img2img: Any
    reload: dict[str, Any] | None = None  # the gallery's (re)load event, for the tab's select


class Watchers:
    """Which browser sessions have the queue tab open: its update stream runs while its session's token
    is current. (Gradio's own `cancels` is left to the page, which does not always send it.)"""

    def __init__(self) -> None:
        self._tokens: dict[str, object] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> object:
        token = object()
        with self._lock:
            self._tokens[session] = token
        return token

    def active(self, session: str, token: object) -> bool:
        with self._lock:
            return self._tokens.get(session) is token

    def stop(self, session: str, token: object | None = None) -> None:
        with self._lock:
            if token is None or self._tokens.get(session) is token:
                self._tokens.pop(session, None)


@dataclass
class QueueTab:
    stop_watching: Any  # a handler for the other tabs' select: the queue tab's updates stop


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
            result = gr.Image(label="Result", type="pil", format="png", interactive=False, height=400,
                              buttons=IMAGE_BUTTONS, elem_id="extras-result")
            info = gr.Textbox(label="Info", lines=3, interactive=False)

    @readable_errors
    def upscale(image, name, how, by, w, h):
        return upscale_picture(studio, image, name, how, by, w, h)

    run.click(upscale, inputs=[source, upscaler, mode, factor, width, height], outputs=[result, info])


# -- PNG info ----------------------------------------------------------------------------------------------

def read_infotext(path: str | None) -> tuple[str, dict[str, str]]:
    """(infotext, its fields) of an uploaded picture; for a picture without one, a note among the fields."""
    if not path:
        return "", {}
    infotext, _ = read_png_info(path)
    if not infotext:
        return "", {"Note": "This picture carries no generation parameters."}
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
        refresh = gr.Button("↻ Refresh", size="sm", elem_id="gallery-refresh")
        following = gr.Button("Older ▶", size="sm")
        label = gr.Markdown("Page 1")
    grid = gr.Gallery(label="Pictures, newest first", columns=8, height=420, allow_preview=False, fit_columns=False,
                      object_fit="contain", interactive=False, buttons=["download"], elem_id="gallery-grid")
    with gr.Row():
        picture = gr.Image(label="Picture", type="filepath", interactive=False, height=400, buttons=IMAGE_BUTTONS,
                           elem_id="gallery-picture")
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

def queue_view(studio: Studio, owner: str) -> tuple[str, Image.Image | None, list[tuple[str, str]]]:
    """(the owner's jobs as a table, the preview of their running job, (label, id) of jobs still open)."""
    jobs = studio.jobs.list_jobs(owner=owner, limit=QUEUE_LIMIT)
    preview = None
    running = next((job for job in jobs if job.state is JobState.running), None)
    if running is not None and running.progress.preview_png:
        preview = Image.open(io.BytesIO(running.progress.preview_png))
    open_jobs = [(job_label(job), job.id) for job in jobs if not job.state.finished]
    return queue_html(jobs), preview, open_jobs


def watch_queue(studio: Studio, owner: str, *, interval: float = QUEUE_REFRESH_SECONDS,
                lifetime: float = QUEUE_WATCH_SECONDS, active: Callable[[], bool] = lambda: True) -> Iterator[tuple[Any, Any, Any]]:
    """The queue tab's updates while it is open (`active()`): (table, preview, job dropdown), each part
    skipped when unchanged, one every `interval` seconds; ends after `lifetime` seconds.

    One long event rather than a timer's many: every event the page sends re-uploads the mask painter's
    layers (a Gradio quirk), so fewer events keep the page responsive.
    """
    deadline = time.monotonic() + lifetime
    shown: tuple[Any, Any, Any] = (None, None, None)
    while True:
        table, preview, open_jobs = queue_view(studio, owner)
        preview_key = preview.tobytes() if preview is not None else None
        yield (table if table != shown[0] else gr.skip(),
               preview if preview_key != shown[1] or shown[0] is None else gr.skip(),
               gr.Dropdown(choices=open_jobs) if open_jobs != shown[2] else gr.skip())
        shown = (table, preview_key, open_jobs)
        time.sleep(interval)
        if time.monotonic() >= deadline or not active():
            return


def queue_tab(studio: Studio, browser: gr.BrowserState, tab: gr.Tab) -> QueueTab:
    """Your jobs with their progress, the running one's live preview, Cancel / Interrupt / Skip."""
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.HTML('<p class="bw-empty">No jobs yet.</p>', elem_id="queue-table")
        with gr.Column(scale=2):
            preview = gr.Image(label="Live preview (your running job)", interactive=False, height=300,
                               buttons=IMAGE_BUTTONS, elem_id="queue-preview")
    with gr.Row():
        chosen = gr.Dropdown([], value=None, label="Job", scale=3, elem_id="queue-job")
        cancel = gr.Button("Cancel job", variant="stop", scale=1)
        interrupt = gr.Button("Interrupt", scale=1)
        skip = gr.Button("Skip", scale=1)
        refresh = gr.Button("↻ Refresh", scale=1, elem_id="queue-refresh")
    outputs = [table, preview, chosen]

    def view(request: gr.Request, browser_id: str):
        table, picture, open_jobs = queue_view(studio, studio.owner(request, browser_id))
        return table, picture, gr.Dropdown(choices=open_jobs)

    watchers = Watchers()

    def watch(request: gr.Request, browser_id: str):
        token = watchers.start(request.session_hash)
        try:
            yield from watch_queue(studio, studio.owner(request, browser_id),
                                   active=lambda: watchers.active(request.session_hash, token))
        finally:
            watchers.stop(request.session_hash, token)

    def stop_watching(request: gr.Request) -> None:
        watchers.stop(request.session_hash)

    def cancel_job(request: gr.Request, browser_id: str, job_id: str | None):
        job = studio.own_job(job_id, studio.owner(request, browser_id))
        if job is None or not studio.jobs.cancel(job.id):
            gr.Info("Choose one of your queued or running jobs to cancel.")
        return view(request, browser_id)

    def stop_running(request: gr.Request, browser_id: str, skip_batch: bool = False):
        """Interrupt (or skip a batch of) the running job, when it is the caller's."""
        current = studio.jobs.current()
        if current is None or current.owner != studio.owner(request, browser_id):
            gr.Info("None of your jobs is running.")
        elif skip_batch:
            studio.jobs.skip()
        else:
            studio.jobs.cancel(current.id)
        return view(request, browser_id)

    def skip_running(request: gr.Request, browser_id: str):
        return stop_running(request, browser_id, skip_batch=True)

    tab.select(watch, inputs=browser, outputs=outputs, show_progress="hidden", concurrency_limit=None)
    refresh.click(view, inputs=browser, outputs=outputs, show_progress="hidden")
    cancel.click(cancel_job, inputs=[browser, chosen], outputs=outputs)
    interrupt.click(stop_running, inputs=browser, outputs=outputs)
    skip.click(skip_running, inputs=browser, outputs=outputs)
    return QueueTab(stop_watching)
