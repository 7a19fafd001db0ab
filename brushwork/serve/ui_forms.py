"""The web UI's forms as plain data: form values -> Recipe, Recipe -> form values, and what progress looks like.

Nothing here imports Gradio, so the mapping is tested without a browser. A form is a dict keyed by the
names in `TXT2IMG_FIELDS` / `IMG2IMG_FIELDS`; the UI builds one component per name, in that order. Both
tabs' forms go on with their ControlNet units' fields, `control_fields(units)`; a form without them has
no units.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import PurePosixPath
from typing import Any, Iterable, Mapping

from PIL import Image, ImageChops

from brushwork.control.preprocessors import PREPROCESSORS, module_name
from brushwork.errors import BrushworkError
from brushwork.recipe import Recipe
from brushwork.serve.jobs import Job, JobState
from brushwork.styles import PromptStyle, apply_styles_to_recipe

AUTOMATIC = "Automatic"  # the VAE dropdown's "the checkpoint's own VAE"
SAME_SAMPLER = "Same as first pass"  # the hires sampler dropdown's "none"
INPAINT_AREAS = ("Whole picture", "Only masked")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
MODES = ("img2img", "inpaint")

COMMON_FIELDS = (
    "prompt", "negative_prompt", "styles", "model", "vae", "sampler", "steps", "cfg_scale", "seed",
    "width", "height", "batch_size", "batch_count", "clip_skip",
)
HIRES_FIELDS = (
    "hires_enable", "hires_upscaler", "hires_scale", "hires_resize_width", "hires_resize_height",
    "hires_steps", "hires_denoising", "hires_prompt", "hires_negative", "hires_sampler",
)
IMAGE_FIELDS = (
    "mode", "init_image", "inpaint", "denoising_strength", "resize_mode", "mask_blur", "inpainting_fill",
    "inpaint_area", "inpaint_padding", "mask_mode", "outpaint_left", "outpaint_right", "outpaint_top", "outpaint_bottom",
)
TXT2IMG_FIELDS = COMMON_FIELDS + HIRES_FIELDS
IMG2IMG_FIELDS = COMMON_FIELDS + IMAGE_FIELDS
# One ControlNet unit's fields; the form names them `control_{index}_{field}`.
CONTROL_PREPROCESSING_FIELDS = (
    "module", "resize_mode", "processor_res", "threshold_a", "threshold_b", "pixel_perfect",
)
CONTROL_UNIT_FIELDS = ("enable", "image", "model", "weight", "guidance_start", "guidance_end", "control_mode",
                       *CONTROL_PREPROCESSING_FIELDS)


def control_field(index: int, name: str) -> str:
    return f"control_{index}_{name}"


def control_fields(units: int) -> tuple[str, ...]:
    """The form names of `units` ControlNet units, unit by unit."""
    return tuple(control_field(index, name) for index in range(units) for name in CONTROL_UNIT_FIELDS)


# -- form -> Recipe --------------------------------------------------------------------------------------

def recipe_from_form(form: dict[str, Any], *, styles: Mapping[str, PromptStyle] | None = None) -> Recipe:
    """The Recipe a txt2img or img2img form describes (pictures inlined as PNG data URLs).

    The styles picked (`form["styles"]`, names in `styles`) are merged into the prompts, as A1111 does
    when it makes a picture: the recipe, and so the infotext, holds the expanded prompts.

    Raises BrushworkError for a missing picture or number or an unknown style, pydantic's ValidationError
    for values the Recipe refuses; nothing is silently fixed.
    """
    fields: dict[str, Any] = {
        "prompt": form.get("prompt") or "",
        "negative_prompt": form.get("negative_prompt") or "",
        "model": form.get("model") or None,
        "vae": None if form.get("vae") in (None, "", AUTOMATIC) else form["vae"],
        "sampler": form.get("sampler"),
        "steps": _whole(form, "steps"),
        "cfg_scale": _number(form, "cfg_scale"),
        "seed": _whole(form, "seed"),
        "width": _whole(form, "width") or None,  # 0: the model's native size
        "height": _whole(form, "height") or None,
        "batch_size": _whole(form, "batch_size"),
        "batch_count": _whole(form, "batch_count"),
        "clip_skip": _whole(form, "clip_skip"),
    }
    if form.get("hires_enable"):
        fields["hires"] = _hires(form)
    if form.get("mode") in MODES:
        fields.update(_image_fields(form))
    units = _control_units(form, has_init_image=form.get("mode") in MODES)
    if units:
        fields["control_units"] = units
    return apply_styles_to_recipe(Recipe(**fields), form.get("styles") or [], styles or {})


def _hires(form: dict[str, Any]) -> dict[str, Any]:
    sampler = form.get("hires_sampler")
    return {
        "upscaler": form.get("hires_upscaler") or "Latent",
        "scale": _number(form, "hires_scale"),
        "resize_width": _whole(form, "hires_resize_width"),
        "resize_height": _whole(form, "hires_resize_height"),
        "steps": _whole(form, "hires_steps"),
        "denoising_strength": _number(form, "hires_denoising"),
        "prompt": form.get("hires_prompt") or None,
        "negative_prompt": form.get("hires_negative") or None,
        "sampler": None if sampler in (None, "", SAME_SAMPLER) else sampler,
    }


def _image_fields(form: dict[str, Any]) -> dict[str, Any]:
    """init_image, mask, outpaint and their settings, from the img2img tab's two sources."""
    fields: dict[str, Any] = {
        "denoising_strength": _number(form, "denoising_strength"),
        "resize_mode": form.get("resize_mode") or "just resize",
        "mask_blur": _whole(form, "mask_blur"),
        "inpainting_fill": form.get("inpainting_fill") or "original",
        "inpaint_full_res": form.get("inpaint_area") == INPAINT_AREAS[1],
        "inpaint_full_res_padding": _whole(form, "inpaint_padding"),
        "inpainting_mask_invert": form.get("mask_mode") == MASK_MODES[1],
    }
    if form["mode"] == "inpaint":
        picture, mask = mask_from_editor(form.get("inpaint"))
        if picture is None:
            raise BrushworkError("inpaint: upload a picture, then paint over the part to repaint")
        if mask is None:
            raise BrushworkError("inpaint: paint over the part of the picture to repaint (the mask is empty)")
        fields["mask"] = png_data_url(mask)
    else:
        picture = form.get("init_image")
        if picture is None:
            raise BrushworkError("img2img: upload a picture to start from")
    fields["init_image"] = png_data_url(picture.convert("RGB"))
    sides = {side: _whole(form, f"outpaint_{side}") for side in ("left", "right", "top", "bottom")}
    if any(sides.values()):
        fields["outpaint"] = sides
    return fields


def _control_units(form: dict[str, Any], *, has_init_image: bool) -> list[dict[str, Any]]:
    """The enabled ControlNet units, as Recipe.control_units; the form's unit count is however many it has."""
    units = []
    index = 0
    while control_field(index, "enable") in form:
        if form[control_field(index, "enable")]:
            units.append(_control_unit(form, index, has_init_image=has_init_image))
        index += 1
    return units


def _control_unit(form: dict[str, Any], index: int, *, has_init_image: bool) -> dict[str, Any]:
    unit = f"ControlNet Unit {index}"
    picture = form.get(control_field(index, "image"))
    if picture is None and not has_init_image:
        raise BrushworkError(f"{unit}: upload a picture to control with (only img2img falls back to its own picture)")
    model = form.get(control_field(index, "model"))
    if not model:
        raise BrushworkError(f"{unit}: pick a ControlNet model (the models folder's ControlNet/; ↻ reloads the list)")
    return {
        "model": model,
        # As uploaded, transparency included: the preprocessors composite it on white, as the extension does.
        "image": None if picture is None else png_data_url(picture),
        "weight": _number(form, control_field(index, "weight")),
        "guidance_start": _number(form, control_field(index, "guidance_start")),
        "guidance_end": _number(form, control_field(index, "guidance_end")),
        "control_mode": form.get(control_field(index, "control_mode")) or "Balanced",
        **control_preprocessing(form, index),
    }


def control_preprocessing(form: dict[str, Any], index: int) -> dict[str, Any]:
    """Unit `index`'s preprocessor settings as ControlUnit fields; a threshold is None where its module has no
    such slider (the page hides it, and its leftover value means nothing)."""
    try:
        preprocessor = PREPROCESSORS[module_name(form.get(control_field(index, "module")) or "none")]
    except BrushworkError as error:
        raise BrushworkError(f"ControlNet Unit {index}: {error}") from None
    settings: dict[str, Any] = {
        "module": preprocessor.name,
        "resize_mode": form.get(control_field(index, "resize_mode")) or "Crop and Resize",
        "processor_res": _whole(form, control_field(index, "processor_res")),
        "pixel_perfect": bool(form.get(control_field(index, "pixel_perfect"))),
    }
    for name in ("threshold_a", "threshold_b"):
        has_slider = getattr(preprocessor, name) is not None
        settings[name] = _number(form, control_field(index, name)) if has_slider else None
    return settings


def mask_from_editor(value: dict[str, Any] | None) -> tuple[Image.Image | None, Image.Image | None]:
    """(picture, mask) of an ImageEditor value: its background, and white wherever a layer was painted.

    The mask is None when nothing is painted; layers of another size are stretched to the picture.
    """
    if not value or value.get("background") is None:
        return None, None
    picture: Image.Image = value["background"]
    mask = Image.new("L", picture.size, 0)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != picture.size:
            alpha = alpha.resize(picture.size, Image.Resampling.NEAREST)
        mask = ImageChops.lighter(mask, alpha.point(lambda a: 255 if a else 0))
    return picture, (mask if mask.getbbox() is not None else None)


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _number(form: dict[str, Any], name: str) -> float:
    value = form.get(name)
    if value is None or value == "":
        raise BrushworkError(f"{name}: enter a number")
    return float(value)


def _whole(form: dict[str, Any], name: str) -> int:
    value = _number(form, name)
    if not value.is_integer():
        raise BrushworkError(f"{name}: enter a whole number, not {value:g}")
    return int(value)


# -- Recipe -> form (send to txt2img / img2img) ---------------------------------------------------------

def form_from_recipe(recipe: Recipe, *, checkpoints: Iterable[str] = (), vaes: Iterable[str] = ()) -> dict[str, Any]:
    """The form values that reproduce `recipe` (as parsed from an infotext).

    A model or VAE the models folder does not have is left out, so the form keeps its current choice; so
    are the batch settings, which an infotext does not record.
    """
    form: dict[str, Any] = {
        "prompt": recipe.prompt, "negative_prompt": recipe.negative_prompt, "sampler": recipe.sampler,
        "steps": recipe.steps, "cfg_scale": recipe.cfg_scale, "seed": recipe.seed,
        "width": recipe.width or 0, "height": recipe.height or 0, "clip_skip": recipe.clip_skip,
        "denoising_strength": recipe.denoising_strength, "mask_blur": recipe.mask_blur,
        "inpainting_fill": recipe.inpainting_fill, "inpaint_area": INPAINT_AREAS[recipe.inpaint_full_res],
        "inpaint_padding": recipe.inpaint_full_res_padding, "mask_mode": MASK_MODES[recipe.inpainting_mask_invert],
        "hires_enable": recipe.hires is not None,
        "styles": [],  # a recipe's prompts already hold its styles' text
    }
    for field, choices in (("model", checkpoints), ("vae", vaes)):
        name = getattr(recipe, field)
        found = match_choice(name, choices) if name else None
        if found is not None:
            form[field] = found
    if recipe.hires is not None:
        hires = recipe.hires
        form.update({
            "hires_upscaler": hires.upscaler, "hires_scale": hires.scale, "hires_resize_width": hires.resize_width,
            "hires_resize_height": hires.resize_height, "hires_steps": hires.steps,
            "hires_denoising": hires.denoising_strength, "hires_prompt": hires.prompt or "",
            "hires_negative": hires.negative_prompt or "", "hires_sampler": hires.sampler or SAME_SAMPLER,
        })
    return form


def match_choice(name: str, choices: Iterable[str]) -> str | None:
    """The dropdown entry an infotext's model name means ("v1-5", "sub/v1-5.safetensors [6ce0161689]")."""
    if name.endswith("]") and " [" in name:
        name = name.rsplit(" [", 1)[0]
    for choice in choices:
        path = PurePosixPath(choice)
        if name in (choice, path.with_suffix("").as_posix(), path.name, path.stem):
            return choice
    return None


def reuse_seed(last_seed: int | None) -> int:
    """♻: the seed of the last picture made in this tab (-1 before the first)."""
    return -1 if last_seed is None else int(last_seed)


def random_seed() -> int:
    """🎲: a new random seed for every job."""
    return -1


def owner_of(username: str | None, browser_id: str | None, anonymous: str) -> str:
    """Who a UI job belongs to: the signed-in user, else this browser's id, else "ui"."""
    if username and username != anonymous:
        return username
    return f"ui-{browser_id}" if browser_id else "ui"


# -- what progress looks like ---------------------------------------------------------------------------

def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def progress_html(job: Job) -> str:
    """A one-line status with a progress bar, for the tab that submitted the job."""
    state = job.state
    if state is JobState.queued:
        place = "next" if job.position == 0 else f"position {job.position + 1}" if job.position is not None else "waiting"
        return _status("queued", f"Queued — {place} in the queue")
    if state is JobState.running:
        step, total = job.progress.step, max(job.progress.total, 1)
        percent = round(100 * step / total)
        text = f"Step {step}/{total} — {percent}% — ETA {format_eta(job.progress.eta_seconds)}"
        return _status("running", text, percent)
    pictures = f"{len(job.images)} picture{'s' if len(job.images) != 1 else ''}"
    if state is JobState.done:
        took = f" in {(job.finished - job.started).total_seconds():.1f} s" if job.finished and job.started else ""
        return _status("done", f"Done: {pictures}{took}", 100)
    if state is JobState.cancelled:
        return _status("cancelled", f"Cancelled ({pictures} kept)")
    return error_html(job.error or "the job failed")


def error_html(message: str) -> str:
    return _status("failed", f"Error: {message}")


def _status(kind: str, text: str, percent: int | None = None) -> str:
    bar = "" if percent is None else (
        f'<div class="bw-bar"><div class="bw-fill" style="width:{percent}%"></div></div>')
    return f'<div class="bw-status bw-{kind}">{bar}<span>{html.escape(text)}</span></div>'


def queue_html(jobs: list[Job]) -> str:
    """Your jobs as a table: state, a progress bar, ETA."""
    if not jobs:
        return '<p class="bw-empty">No jobs yet.</p>'
    rows = []
    for job in jobs:
        step, total = job.progress.step, job.progress.total
        percent = round(100 * step / total) if total else 0
        if job.state is JobState.running:
            eta = format_eta(job.progress.eta_seconds)
        elif job.state is JobState.queued and job.position is not None:
            eta = f"#{job.position + 1} in queue"
        else:
            eta = job.error or ""
        prompt = job.recipe.prompt if len(job.recipe.prompt) <= 60 else job.recipe.prompt[:57] + "…"
        rows.append(
            f"<tr><td><code>{job.id[:8]}</code></td><td>{html.escape(prompt)}</td>"
            f'<td class="bw-{job.state.value}">{job.state.value}</td>'
            f'<td><progress max="100" value="{percent}"></progress> {step}/{total}</td>'
            f"<td>{html.escape(eta)}</td><td>{len(job.images)}</td></tr>"
        )
    head = "<tr><th>Job</th><th>Prompt</th><th>State</th><th>Progress</th><th>ETA / error</th><th>Pictures</th></tr>"
    return f'<table class="bw-queue"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def job_label(job: Job) -> str:
    """How a job is named in the cancel dropdown."""
    prompt = job.recipe.prompt[:40] or "(no prompt)"
    return f"{job.id[:8]} — {job.state.value} — {prompt}"
