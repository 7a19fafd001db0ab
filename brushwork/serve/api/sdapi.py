"""A1111's `/sdapi/v1` generation routes: txt2img, img2img, progress, interrupt, skip, png-info, extra-single-image,
extra-batch-images.

txt2img and img2img are synchronous, as in A1111: the request goes through the same job queue as every
other (same fairness, same crash safety) and the answer comes when its job ends. An interrupted job
answers with the pictures made before the interruption, as A1111 does. With ControlNet units (the extension's
alwayson script, sdapi_controlnet.py) the answer ends with their detected maps, as the extension's does.
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from PIL import Image

from brushwork.errors import BrushworkError
from brushwork.models.store import ModelStore
from brushwork.output import encode_as_sample, next_output_path
from brushwork.recipe import Recipe
from brushwork.serve.api.info import read_info_from_bytes
from brushwork.serve.api.sdapi_adapter import a1111_wording, img2img_recipe, info_json, png_info_parameters, txt2img_recipe
from brushwork.serve.api.sdapi_controlnet import (
    check_control_models, check_control_pictures, control_unit_wording, detected_maps,
)
from brushwork.serve.api.sdapi_info import A1111_OPTIONS
from brushwork.serve.api.sdapi_schemas import (
    ExtrasBaseRequest,
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    GenerationRequest,
    Img2ImgRequest,
    ImageResponse,
    PngInfoRequest,
    PngInfoResponse,
    ProgressResponse,
    ProgressState,
    Txt2ImgRequest,
)
from brushwork.serve.deps import (
    ImageUpscalers, Jobs, Options, ServerLimits, ServerSettings, Shutdown, Store, Upscalers, User, WebuiOptions,
)
from brushwork.serve.jobs import Job, JobService, JobState
from brushwork.serve.limits import OverLimit, admit, decode_base64_image, png_base64
from brushwork.serve.settings import Limits, Settings
from brushwork.styles import STYLES_NAME, apply_styles_to_recipe, load_styles
from brushwork.upscale import find_face_restorer, plan_size, postprocess_fields

router = APIRouter(tags=["sdapi (AUTOMATIC1111)"])

WAIT_SLICE_SECONDS = 5.0  # how often a waiting request looks up from its job to check for shutdown


@router.post("/txt2img", response_model=ImageResponse)
def txt2img(body: Txt2ImgRequest, jobs: Jobs, store: Store, settings: ServerSettings, user: User, options: Options,
            upscalers: ImageUpscalers, shutdown: Shutdown) -> ImageResponse:
    recipe = styled(txt2img_recipe(body, options), body, settings)
    recipe = admit_a1111(recipe, body, settings.limits, store, upscalers.names())
    return generate(jobs, recipe, user, body, shutdown, sample_settings(options, settings, "txt2img"), upscalers)


@router.post("/img2img", response_model=ImageResponse)
def img2img(body: Img2ImgRequest, jobs: Jobs, store: Store, settings: ServerSettings, user: User, options: Options,
            upscalers: ImageUpscalers, shutdown: Shutdown) -> ImageResponse:
    recipe = styled(img2img_recipe(body, options, upscalers.names()), body, settings)
    recipe = admit_a1111(recipe, body, settings.limits, store, upscalers.names())
    return generate(jobs, recipe, user, body, shutdown, sample_settings(options, settings, "img2img"), upscalers)


@router.get("/progress", response_model=ProgressResponse)
def progress(jobs: Jobs, user: User, skip_current_image: Annotated[bool, Query()] = False) -> ProgressResponse:
    """Your running job's progress (other users' jobs are not shown) and how many of yours are waiting."""
    # A caller's unfinished jobs are among their newest; clients poll this often, so look no further back.
    unfinished = [job for job in jobs.list_jobs(owner=user, limit=100) if not job.state.finished]
    running = jobs.current()
    if running is None or running.owner != user or running.state is not JobState.running:
        return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState(job_count=len(unfinished)))
    step, total = running.progress.step, running.progress.total
    preview = running.progress.preview_png
    return ProgressResponse(
        progress=step / total if total else 0.0,
        eta_relative=running.progress.eta_seconds or 0.0,
        state=ProgressState(
            job=f"job {running.id}", job_count=len(unfinished), sampling_step=step, sampling_steps=total,
            job_timestamp=(running.started or running.created).strftime("%Y%m%d%H%M%S"),
            interrupted=False, skipped=False,
        ),
        current_image=None if skip_current_image or preview is None else base64.b64encode(preview).decode("ascii"),
        textinfo=f"Step {step}/{total}" if total else None,
    )


@router.post("/interrupt")
def interrupt(jobs: Jobs, user: User) -> dict:
    """Stop your running job; it ends with the pictures made so far (A1111 stops anyone's)."""
    running = jobs.current()
    if running is not None and running.owner == user:
        jobs.cancel(running.id)
    return {}


@router.post("/skip")
def skip(jobs: Jobs, user: User) -> dict:
    """Drop the batch your running job is on; it goes on with its next batch."""
    running = jobs.current()
    if running is not None and running.owner == user:
        jobs.skip()
    return {}


@router.post("/png-info", response_model=PngInfoResponse)
def png_info(body: PngInfoRequest, limits: ServerLimits) -> PngInfoResponse:
    if not body.image.strip():
        return PngInfoResponse(info="")
    data, _ = decode_base64_image(body.image, "image", limits)
    infotext, recipe_json = read_info_from_bytes(data)
    items = {"brushwork": recipe_json} if recipe_json is not None else {}
    return PngInfoResponse(info=infotext or "", items=items, parameters=png_info_parameters(infotext) if infotext else {})


@router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
def extra_single_image(body: ExtrasSingleImageRequest, limits: ServerLimits, upscalers: ImageUpscalers,
                       options: Options, settings: ServerSettings) -> ExtrasSingleImageResponse:
    """A1111's Extras tab for one picture: upscale (one upscaler, or two blended), then restore faces."""
    if not body.image:
        raise BrushworkError("image: send the picture as base64")
    image, info = extras(body, body.image, "image", limits, upscalers)
    return ExtrasSingleImageResponse(html_info=info, image=sample_base64(image, sample_settings(options, settings, "extras")))


@router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
def extra_batch_images(body: ExtrasBatchImagesRequest, limits: ServerLimits, upscalers: ImageUpscalers,
                       options: Options, settings: ServerSettings) -> ExtrasBatchImagesResponse:
    """extra-single-image for each picture of `imageList`, all checked before the first is upscaled."""
    if not body.imageList:
        raise BrushworkError("imageList: send at least one picture")
    for number, item in enumerate(body.imageList):
        decode_base64_image(item.data, f"imageList[{number}].data", limits)
    done = [extras(body, item.data, f"imageList[{n}].data", limits, upscalers) for n, item in enumerate(body.imageList)]
    samples = sample_settings(options, settings, "extras")
    return ExtrasBatchImagesResponse(html_info=done[0][1], images=[sample_base64(image, samples) for image, _ in done])


def extras(body: ExtrasBaseRequest, data: str, field: str, limits: Limits, upscalers: Upscalers) -> tuple[Image.Image, str]:
    """One picture through the Extras settings: (the result, A1111's html_info)."""
    for name in ("gfpgan_visibility", "codeformer_visibility", "codeformer_weight"):
        if not 0 <= getattr(body, name) <= 1:
            raise BrushworkError(f"{name}: must be between 0 and 1, got {getattr(body, name)!r}")
    for name, restorer in (("gfpgan_visibility", "GFPGAN"), ("codeformer_visibility", "CodeFormer")):
        if getattr(body, name) > 0:
            find_face_restorer(restorer, upscalers.store)  # its weights are there, before any work
    _, image = decode_base64_image(data, field, limits)
    if body.resize_mode not in (0, 1):
        raise BrushworkError(f"resize_mode: {body.resize_mode} is not 0 (scale by) or 1 (scale to)")
    scale: float | tuple[int, int] = body.upscaling_resize
    if body.resize_mode == 1:
        scale = (body.upscaling_resize_w, body.upscaling_resize_h)
    plan = plan_size(image.size, scale)
    _check_size(plan.final if body.upscaling_crop else plan.resized, limits)
    result, fields = image, {}
    if body.upscaler_1 != "None":
        result = _upscaled(upscalers, image, body.upscaler_1, scale, body.upscaling_crop)
        fields = postprocess_fields(body.upscaler_1, scale, plan)
        if body.upscaler_2 != "None" and body.extras_upscaler_2_visibility > 0:
            second = _upscaled(upscalers, image, body.upscaler_2, scale, body.upscaling_crop)
            result = Image.blend(result.convert("RGB"), second.convert("RGB"), min(1.0, body.extras_upscaler_2_visibility))
            fields["Postprocess upscaler 2"] = body.upscaler_2
            fields["Postprocess upscaler 2 visibility"] = f"{body.extras_upscaler_2_visibility:g}"
    # After the upscale, GFPGAN then CodeFormer: A1111's postprocessing order.
    if body.gfpgan_visibility > 0:
        result = upscalers.restore_faces(result, "GFPGAN", body.gfpgan_visibility, 0.5)
        fields["GFPGAN visibility"] = f"{body.gfpgan_visibility:g}"
    if body.codeformer_visibility > 0:
        result = upscalers.restore_faces(result, "CodeFormer", body.codeformer_visibility, body.codeformer_weight)
        fields["CodeFormer visibility"] = f"{body.codeformer_visibility:g}"
        fields["CodeFormer weight"] = f"{body.codeformer_weight:g}"
    if not fields:
        return image, ""
    info = ", ".join(f"{key}: {value}" for key, value in fields.items())
    return result, f"<p>{info}</p>"


def styled(recipe: Recipe, body: GenerationRequest, settings: Settings) -> Recipe:
    """The request's `styles` (rows of the data folder's styles.csv) merged into its prompts, as A1111 does."""
    if not body.styles:
        return recipe
    return apply_styles_to_recipe(recipe, body.styles, load_styles(settings.data_dir / STYLES_NAME))


def admit_a1111(recipe: Recipe, body: GenerationRequest, limits: Limits, store: ModelStore,
                upscalers: list[str]) -> Recipe:
    """`admit` and the ControlNet units' own checks, refusals worded with A1111's field names (hr_upscaler,
    n_iter, init_images, alwayson_scripts.controlnet.args[0].image ...)."""
    check_control_models(recipe, body, store)
    try:
        recipe = admit(recipe, limits, store, upscalers)
    except BrushworkError as error:
        error.args = (control_unit_wording(a1111_wording(str(error)), body),)
        raise
    check_control_pictures(recipe, body, limits)
    return recipe


@dataclass(frozen=True)
class SampleSettings:
    """How the /options say answered pictures are encoded (samples_format, jpeg_quality) and, for a request
    with `save_images`, the folder they are also saved to (outdir_samples, else outdir_<mode>_samples)."""

    samples_format: str
    jpeg_quality: int
    folder: Path


def sample_settings(options: WebuiOptions, settings: Settings, mode: str) -> SampleSettings:
    def option(name: str) -> Any:
        return options.other.get(name, A1111_OPTIONS[name])

    with options.lock:
        folder = option("outdir_samples") or option(f"outdir_{mode}_samples")
        return SampleSettings(option("samples_format"), option("jpeg_quality"), settings.data_dir / folder)


def generate(jobs: JobService, recipe: Recipe, user: str, body: GenerationRequest, shutdown: threading.Event,
             samples: SampleSettings, upscalers: Upscalers) -> ImageResponse:
    """Queue the recipe, wait for its job, answer as A1111 does (the ControlNet units' detected maps last)."""
    job = wait_for(jobs, jobs.submit(recipe, user).id, shutdown)
    if job.state is JobState.failed:
        # The queue marks bugs "internal error"; anything else is something the request asked for.
        status = 500 if (job.error or "").startswith("internal error") else 422
        raise HTTPException(status, job.error or "the job failed")
    pictures = [encode_as_sample(_file_bytes(jobs, record.id), samples.samples_format, samples.jpeg_quality)
                for record in job.images]
    if body.save_images:
        save_samples(pictures, job, samples)
    images = [base64.b64encode(picture).decode("ascii") for picture in pictures] if body.send_images else []
    if body.send_images:
        images += [sample_base64(image, samples) for image in detected_maps(recipe, body, upscalers.run)]
    parameters = body.model_dump()
    if isinstance(body, Img2ImgRequest) and not body.include_init_images:
        parameters["init_images"], parameters["mask"] = None, None  # A1111 does not echo them back
    return ImageResponse(images=images, parameters=parameters, info=info_json(job))


def wait_for(jobs: JobService, job_id: str, shutdown: threading.Event) -> Job:
    """The job once it has ended; 503 if the server stops first (the job stays queued, and runs later)."""
    while True:
        for event in jobs.events(job_id, timeout=WAIT_SLICE_SECONDS):
            if event.state.finished:
                break
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(500, f"job {job_id} vanished from the queue")
        if job.state.finished:
            return job
        if shutdown.is_set():
            raise HTTPException(503, f"the server is stopping; job {job_id} stays queued (GET /api/v1/jobs/{job_id})")


def sample_base64(image: Image.Image, samples: SampleSettings) -> str:
    """An extras result as A1111 answers it: in the samples format."""
    if samples.samples_format.lower() == "png":
        return png_base64(image)
    png = io.BytesIO()
    image.save(png, format="PNG")
    return base64.b64encode(encode_as_sample(png.getvalue(), samples.samples_format, samples.jpeg_quality)).decode("ascii")


def save_samples(pictures: list[bytes], job: Job, samples: SampleSettings) -> None:
    """A1111's `save_images`: each picture also goes to the samples folder as NNNNN-seed-prompt.<format>
    (the gallery keeps its PNG either way)."""
    suffix = "." + samples.samples_format.lower()
    with _SAVE_LOCK:  # the sequence number is picked from the folder's contents
        for picture, record in zip(pictures, job.images):
            path = next_output_path(samples.folder, seed=record.seed, prompt=job.recipe.prompt).with_suffix(suffix)
            path.write_bytes(picture)


_SAVE_LOCK = threading.Lock()


def _file_bytes(jobs: JobService, image_id: str) -> bytes:
    path = jobs.image_path(image_id)
    if path is None:
        raise HTTPException(500, f"picture {image_id} is missing from the outputs folder")
    return path.read_bytes()


def _upscaled(upscalers: Upscalers, image: Image.Image, name: str, scale: float | tuple[int, int], crop: bool) -> Image.Image:
    if crop or not isinstance(scale, tuple):
        return upscalers.upscale(image, name, scale)
    # Without crop, A1111 stretches to the asked size: upscale to cover it, then resize to fit exactly.
    factor = max(scale[0] / image.width, scale[1] / image.height)
    return upscalers.upscale(image, name, factor).resize(scale, Image.Resampling.LANCZOS)


def _check_size(size: tuple[int, int], limits: Limits) -> None:
    width, height = size
    if width * height > limits.max_pixels or max(size) > limits.max_image_side:
        raise OverLimit(f"the upscaled picture would be {width}x{height}, over this server's limit of "
                        f"{limits.max_pixels:,} pixels / {limits.max_image_side} on a side (--max-pixels, --max-image-side)")
