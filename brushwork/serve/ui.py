"""The web UI: a Gradio page at `/`, a client of the job queue like any other front end.

    app = create_app(settings, ui=mount)      # `brushwork serve` does this when this module exists

Tabs: txt2img (with the hires fix), img2img (with the inpainting mask painter and outpainting), extras
(upscale), PNG info, gallery and queue. Pictures are made only by submitting Recipes to the app's
`JobService`; the UI never calls the Engine. Everything it serves is local: a built-in theme on system
fonts, no analytics, no server-side rendering process.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from pydantic import ValidationError

from brushwork.engine.hires import LATENT_UPSCALERS
from brushwork.errors import BrushworkError
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe, describe_validation_error
from brushwork.serve.auth import ANONYMOUS
from brushwork.serve.deps import Upscalers
from brushwork.serve.jobs import Job, JobService
from brushwork.serve.limits import admit
from brushwork.serve.settings import Settings
from brushwork.serve.ui_forms import owner_of

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: nothing leaves the machine

import gradio as gr  # noqa: E402

log = logging.getLogger(__name__)

SYSTEM_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]
CSS = """
.bw-status { display: flex; flex-direction: column; gap: 4px; min-height: 1.5em; }
.bw-bar { height: 8px; border-radius: 4px; background: var(--neutral-200); overflow: hidden; }
.bw-fill { height: 100%; background: var(--color-accent); transition: width .3s; }
.bw-failed span { color: var(--error-text-color, #b91c1c); font-weight: 600; }
.bw-queue { width: 100%; border-collapse: collapse; }
.bw-queue th, .bw-queue td { padding: 4px 8px; border-bottom: 1px solid var(--border-color-primary); text-align: left; }
.bw-tool { flex-grow: 0 !important; min-width: 44px !important; max-width: 44px; height: 44px; align-self: center; }
"""


@dataclass
class Studio:
    """What the UI's handlers use: the app's services, as `create_app` put them on `app.state`."""

    jobs: JobService
    store: ModelStore
    settings: Settings
    upscalers: Upscalers

    def checkpoints(self) -> list[str]:
        return [entry.name for entry in self.store.entries("checkpoint")]

    def vaes(self) -> list[str]:
        return [entry.name for entry in self.store.entries("vae")]

    def image_upscalers(self) -> list[str]:
        return self.upscalers.names()

    def hires_upscalers(self) -> list[str]:
        return [*LATENT_UPSCALERS, *self.image_upscalers()]

    def owner(self, request: gr.Request | None, browser_id: str | None) -> str:
        return owner_of(getattr(request, "username", None), browser_id, ANONYMOUS)

    def submit(self, recipe: Recipe, owner: str) -> Job:
        """Queue a recipe after the checks every front end applies (limits, names, pictures)."""
        names = self.image_upscalers()
        return self.jobs.submit(admit(recipe, self.settings.limits, self.store, names), owner)

    def own_job(self, job_id: str | None, owner: str) -> Job | None:
        job = self.jobs.get(job_id) if job_id else None
        return job if job is not None and job.owner == owner else None


def describe(error: Exception) -> str:
    """The one-line message a user sees for a refused recipe or a failed action."""
    text = describe_validation_error(error) if isinstance(error, ValidationError) else str(error)
    return " ".join(text.split()) or type(error).__name__


def readable_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Domain errors become a readable gr.Error (a toast); anything else an "internal error" one, logged."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (BrushworkError, ValidationError) as error:
            raise gr.Error(describe(error), print_exception=False) from None
        except Exception as error:
            log.exception("web UI action %s failed", handler.__name__)
            raise gr.Error(f"internal error ({type(error).__name__}); see the server log", print_exception=False) from None

    return wrapper


def new_browser_id(current: str | None) -> str:
    """A random id kept in the browser's storage: the owner of its jobs when nobody signs in."""
    return current or secrets.token_hex(8)


def build_ui(studio: Studio) -> gr.Blocks:
    """The whole page: one function per tab, wired together here."""
    from brushwork.serve import ui_generate, ui_tabs

    with gr.Blocks(title="brushwork", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as blocks:
        browser = gr.BrowserState("", storage_key="brushwork-browser-id")
        blocks.load(new_browser_id, inputs=browser, outputs=browser, show_progress="hidden", queue=False)
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("txt2img", id="txt2img", elem_id="tab-txt2img") as txt2img_tab:
                txt2img = ui_generate.generation_tab(studio, browser, "txt2img")
            with gr.Tab("img2img", id="img2img", elem_id="tab-img2img") as img2img_tab:
                img2img = ui_generate.generation_tab(studio, browser, "img2img")
            with gr.Tab("Extras", id="extras", elem_id="tab-extras") as extras_tab:
                ui_tabs.extras_tab(studio)
            with gr.Tab("PNG info", id="pnginfo", elem_id="tab-pnginfo") as pnginfo_tab:
                png_info = ui_tabs.png_info_tab()
            with gr.Tab("Gallery", id="gallery", elem_id="tab-gallery") as gallery_tab:
                gallery = ui_tabs.gallery_tab(studio)
            with gr.Tab("Queue", id="queue", elem_id="tab-queue") as queue_tab:
                queue = ui_tabs.queue_tab(studio, browser, queue_tab)

        # Opening another tab stops the queue tab's updates; the gallery reloads when opened.
        for tab in (txt2img_tab, img2img_tab, extras_tab, pnginfo_tab, gallery_tab):
            tab.select(queue.stop_watching, show_progress="hidden", queue=False)
        gallery_tab.select(**gallery.reload)

        for source in (png_info, gallery):
            ui_generate.wire_send_to(studio, source.send_txt2img, source.infotext, source.picture, txt2img)
            ui_generate.wire_send_to(studio, source.send_img2img, source.infotext, source.picture, img2img)
    blocks.queue(default_concurrency_limit=8)
    return blocks


def theme() -> gr.themes.Base:
    return gr.themes.Base(primary_hue="orange", font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def current_user(request: Request) -> str | None:
    """Gradio's user: whoever the app's auth middleware let in (it refuses everyone else first)."""
    return getattr(request.state, "user", None)


def mount(app: FastAPI) -> None:
    """Mount the web UI at `/` of an app made by `create_app` (after its API routes, which stay reachable)."""
    from brushwork.serve.queue import OUTPUTS_NAME

    state = app.state
    studio = Studio(jobs=state.jobs, store=state.store, settings=state.settings, upscalers=state.upscalers)
    outputs = Path(state.settings.data_dir).resolve() / OUTPUTS_NAME
    gr.mount_gradio_app(
        app,
        build_ui(studio),
        path="/",
        footer_links=["settings"],
        auth_dependency=current_user,
        allowed_paths=[str(outputs)],  # gallery pictures, which /api/v1/images serves to the same users
        max_file_size=state.settings.limits.max_upload_bytes,
        show_error=True,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        enable_monitoring=False,
        theme=theme(),
        css=CSS,
    )
