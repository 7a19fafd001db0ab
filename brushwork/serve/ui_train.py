"""The web UI's Train tab: pick a dataset and a base, set the run, watch its loss curve and sample pictures.

It is a client of the server's TrainingQueue like `/api/v1/train`: Train submits a TrainRequest and then
follows the job in one long event (as the queue tab does), yielding the status line, the curve and the
samples whenever they change, until the job ends or Cancel stops it.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
from PIL import Image

from brushwork.serve.jobs import JobState
from brushwork.serve.training import TrainingJob
from brushwork.serve.ui_studio import Studio, gr, readable_errors

FOLLOW_SECONDS = 0.5  # how often a followed job is looked at
FOLLOW_HOURS = 12  # a browser follows one job at most this long (the job itself runs on regardless)
KINDS = [("LoRA", "lora"), ("Textual inversion (embedding)", "embedding"), ("DreamBooth (whole model)", "dreambooth"),
         ("ControlNet (control pictures in the dataset's conditioning/)", "controlnet")]


def status_html(job: TrainingJob | None) -> str:
    if job is None:
        return '<p class="bw-empty">No training yet.</p>'
    words = {JobState.queued: f"queued (position {(job.position or 0) + 1})",
             JobState.running: f"step {job.step} of {job.total}",
             JobState.done: f"done: {job.output}", JobState.failed: f"failed: {job.error}",
             JobState.cancelled: f"cancelled after step {job.step}"}[job.state]
    loss = f" · loss {job.loss:.4f}" if job.loss is not None and job.state is JobState.running else ""
    eta = f" · {job.eta_seconds:.0f} s left" if job.eta_seconds is not None and job.state is JobState.running else ""
    width = 100 * job.step / max(job.total, 1)
    css = "bw-status bw-failed" if job.state is JobState.failed else "bw-status"
    return (f'<div class="{css}" id="train-state" data-state="{job.state.value}"><span>{html.escape(words)}{loss}'
            f'{eta}</span><div class="bw-bar"><div class="bw-fill" style="width:{width:.1f}%"></div></div></div>')


def loss_curve(job: TrainingJob | None) -> pd.DataFrame:
    if job is None or not job.losses:
        return pd.DataFrame({"step": [], "loss": []})
    return pd.DataFrame({"step": [(i + 1) * job.loss_every for i in range(len(job.losses))], "loss": job.losses})


def sample_items(studio: Studio, job: TrainingJob) -> list[tuple[Image.Image, str]]:
    """The job's samples as pictures (read here: the runs folder is never served as files, so a browser sees
    only the samples of the job it follows)."""
    items = []
    for name in job.samples:
        with Image.open(studio.training.sample_path(job.id, name)) as opened:
            items.append((opened.convert("RGB"), f"step {int(Path(name).stem.split('-')[1])}"))
    return items


def follow(studio: Studio, job_id: str) -> Iterator[tuple[Any, Any, Any]]:
    """(status, curve, samples) whenever they change, until the job ends."""
    deadline = time.monotonic() + FOLLOW_HOURS * 3600
    shown: tuple[Any, ...] = (None, None, None)
    while time.monotonic() < deadline:
        job = studio.training.get(job_id)
        status, points, samples = status_html(job), len(job.losses), list(job.samples)
        yield (status if status != shown[0] else gr.skip(),
               loss_curve(job) if points != shown[1] else gr.skip(),
               sample_items(studio, job) if samples != shown[2] else gr.skip())
        shown = (status, points, samples)
        if job.state.finished:
            return
        time.sleep(FOLLOW_SECONDS)


def train_tab(studio: Studio, browser: gr.BrowserState) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                dataset = gr.Dropdown(_datasets(studio), label="Dataset (a folder in the data folder's datasets/)",
                                      scale=4, elem_id="train-dataset")
                refresh = gr.Button("↻", scale=0, elem_classes="bw-tool", elem_id="train-refresh")
            kind = gr.Radio(KINDS, value="lora", label="Train", elem_id="train-kind")
            with gr.Row():
                base = gr.Dropdown(studio.checkpoints(), value=None, label="Base model (default: the server's)",
                                   elem_id="train-base")
                output = gr.Textbox(label="Output name", placeholder="my-style", elem_id="train-output")
            with gr.Row():
                steps = gr.Number(500, label="Steps", precision=0, minimum=1, elem_id="train-steps")
                lr = gr.Number(None, label="Learning rate (blank: the kind's)", elem_id="train-lr")
                resolution = gr.Number(512, label="Resolution", precision=0, minimum=64, elem_id="train-resolution")
                batch_size = gr.Number(1, label="Batch size", precision=0, minimum=1)
            with gr.Group(visible=True) as lora_options:
                with gr.Row():
                    rank = gr.Number(8, label="Rank", precision=0, minimum=1, elem_id="train-rank")
                    alpha = gr.Number(8, label="Alpha", minimum=0.001)
                    text_encoder = gr.Checkbox(False, label="Train the text encoder too")
                new_words = gr.Textbox(label="New words (pivotal tuning): WORD or WORD=INIT, comma-separated",
                                       placeholder="sksstyle=watercolor", elem_id="train-new-words")
            with gr.Group(visible=False) as embedding_options:
                with gr.Row():
                    token = gr.Textbox(label="Token (the new word)", elem_id="train-token")
                    init_word = gr.Textbox(label="Init word", elem_id="train-init-word")
                    vectors = gr.Number(1, label="Vectors", precision=0, minimum=1)
            with gr.Group(visible=False) as dreambooth_options:
                instance_prompt = gr.Textbox(label="Instance prompt", placeholder="a photo of sks dog")
                with gr.Row():
                    class_prompt = gr.Textbox(label="Class prompt", placeholder="a photo of a dog")
                    class_images = gr.Number(0, label="Class pictures (prior preservation)", precision=0, minimum=0)
            with gr.Row():
                sample_every = gr.Number(0, label="Sample every N steps (0: never)", precision=0, minimum=0,
                                         elem_id="train-sample-every")
                sample_prompt = gr.Textbox(label="Sample prompt (blank: the first caption)", elem_id="train-sample-prompt")
            with gr.Row():
                start = gr.Button("Train", variant="primary", elem_id="train-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
        with gr.Column(scale=3):
            status = gr.HTML(status_html(None), elem_id="train-status")
            curve = gr.LinePlot(loss_curve(None), x="step", y="loss", title="Loss", height=260, elem_id="train-curve")
            samples = gr.Gallery(label="Sample pictures", columns=4, height=260, elem_id="train-samples")
    job_id = gr.State(None)
    fields = [dataset, kind, base, output, steps, lr, resolution, batch_size, rank, alpha, text_encoder, new_words,
              token, init_word, vectors, instance_prompt, class_prompt, class_images, sample_every, sample_prompt]

    @readable_errors
    def submit(request: gr.Request, browser_id: str, *values):
        names = ["dataset", "kind", "base", "output", "steps", "lr", "resolution", "batch_size", "rank", "alpha",
                 "train_text_encoder", "new_words", "token", "init_word", "vectors", "instance_prompt",
                 "class_prompt", "class_images", "sample_every", "sample_prompt"]
        form = {name: value for name, value in zip(names, values) if value not in (None, "")}
        return studio.training.submit(_words(_numbers(form)), studio.owner(request, browser_id)).id

    def watch(job: str | None):
        if job is None:
            return
        yield from follow(studio, job)

    def stop(request: gr.Request, browser_id: str, job: str | None) -> None:
        own = studio.training.get(job) if job else None
        if own is None or own.owner != studio.owner(request, browser_id) or not studio.training.cancel(own.id):
            gr.Info("None of your training jobs is running or queued.")

    def show_options(chosen: str):
        return (gr.Group(visible=chosen == "lora"), gr.Group(visible=chosen == "embedding"),
                gr.Group(visible=chosen == "dreambooth"))

    kind.change(show_options, inputs=kind, outputs=[lora_options, embedding_options, dreambooth_options],
                show_progress="hidden", queue=False)
    refresh.click(lambda: gr.Dropdown(choices=_datasets(studio)), outputs=dataset, show_progress="hidden")
    start.click(submit, inputs=[browser, *fields], outputs=job_id).success(
        watch, inputs=job_id, outputs=[status, curve, samples], show_progress="hidden", concurrency_limit=None)
    cancel.click(stop, inputs=[browser, job_id], show_progress="hidden")


def _datasets(studio: Studio) -> list[tuple[str, str]]:
    return [(f"{d['name']} ({d['pictures']} pictures)", d["name"]) for d in studio.training.datasets()]


def _words(form: dict) -> dict:
    """The new words box as the request's list (a word never holds a comma). They train with a LoRA only: for
    another kind the box is hidden, and what it still holds is not part of the run."""
    text = form.pop("new_words", "")
    if text.strip() and form.get("kind") == "lora":
        form["new_words"] = [entry.strip() for entry in text.split(",")]
    return form


def _numbers(form: dict) -> dict:
    """Gradio's Number gives floats; the request's whole numbers are ints."""
    whole = ("steps", "resolution", "batch_size", "rank", "vectors", "class_images", "sample_every")
    return {name: int(value) if name in whole else value for name, value in form.items()}
