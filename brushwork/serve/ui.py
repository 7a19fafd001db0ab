"""The web UI: a Gradio page at `/`, a client of the job queue like any other front end.

    app = create_app(settings, ui=mount)      # `brushwork serve` does this when this module exists

Tabs: txt2img (with the hires fix), img2img (with the inpainting mask painter and outpainting), both with
a picker of the data dir's styles.csv and ControlNet units; extras (upscale), PNG info, gallery, queue and
train (fine-tuning). Pictures are made only by submitting Recipes to the app's `JobService`; the UI never
calls the Engine (a ControlNet unit's Preview runs only its preprocessor). Everything it serves is local: a
built-in theme on system fonts, no analytics, no server-side rendering process.

This module only assembles the page. The imports point one way:

    ui  ->  ui_generate (txt2img, img2img)  ->  ui_control (their ControlNet units)  ->  ui_studio (Studio, errors)  ->  ui_forms
    ui  ->  ui_tabs, ui_train (the other tabs)  ->  ui_studio
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from fastapi import FastAPI, Request

from brushwork.serve import ui_generate, ui_tabs, ui_train
from brushwork.serve.ui_studio import Studio, new_browser_id

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


def build_ui(studio: Studio) -> gr.Blocks:
    """The whole page: one function per tab, wired together here."""
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
            with gr.Tab("Train", id="train", elem_id="tab-train") as train_tab:
                ui_train.train_tab(studio, browser)

        # Opening another tab stops the queue tab's updates; the gallery reloads when opened.
        for tab in (txt2img_tab, img2img_tab, extras_tab, pnginfo_tab, gallery_tab, train_tab):
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
    studio = Studio(jobs=state.jobs, store=state.store, settings=state.settings, upscalers=state.upscalers,
                    training=state.training)
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
