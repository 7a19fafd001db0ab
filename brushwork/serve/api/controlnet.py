"""The sd-webui-controlnet extension's own routes, at `/controlnet/...` as the extension mounts them (its
scripts/api.py): version, model_list, module_list, settings and detect, shaped as its newest release answers.

Its units in txt2img and img2img are read by sdapi_controlnet.py. Like every path, these need credentials when
the server has them (the auth middleware covers the whole app).
"""

from __future__ import annotations

from annotated_types import MaxLen
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from brushwork.control.preprocessors import (
    ALIASES, PREPROCESSORS, RESOLUTION, RESOLUTION_RANGE, Preprocessor, module_name, preprocess,
)
from brushwork.errors import BrushworkError, RecipeError
from brushwork.control.infotext import controlnet_model_title
from brushwork.recipe import Recipe
from brushwork.serve.api.sdapi import sample_base64, sample_settings
from brushwork.serve.api.sdapi_controlnet import check_working_size, checked_threshold
from brushwork.serve.deps import ImageUpscalers, Options, ServerLimits, ServerSettings, Store
from brushwork.serve.limits import OverLimit, decode_base64_image

router = APIRouter(prefix="/controlnet", tags=["controlnet (sd-webui-controlnet)"])

API_VERSION = 2  # the extension's external_code.get_api_version()
DEFAULT_RESOLUTION = int(RESOLUTION.default)  # what the extension's -1 means for a processor resolution
# The most units a request may send (Recipe.control_units' length limit).
UNIT_COUNT = next(rule.max_length for rule in Recipe.model_fields["control_units"].metadata if isinstance(rule, MaxLen))
# The extension's internal module names (module_list without alias_names): the old names it still keys modules by.
# "fake_scribble" predates them all; the extension calls that module scribble_hed.
INTERNAL_NAMES = {label: name for name, label in ALIASES.items() if name != "fake_scribble"}


class DetectRequest(BaseModel):
    """The extension's detect body (-1: the module's default)."""

    model_config = ConfigDict(extra="ignore")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list, description="Base64 pictures or data: URLs.")
    controlnet_images: list[str] = Field(default_factory=list, description="webuiapi's name for controlnet_input_images.")
    controlnet_processor_res: int = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    controlnet_masks: list[str] = Field(default_factory=list, description="Accepted and unused: no module brushwork "
                                        "runs takes a mask (the extension ignores them for those too).")
    low_vram: bool = False


class DetectResponse(BaseModel):
    images: list[str] = Field(description="The control maps, encoded as the samples_format option says.")
    info: str = "Success"


@router.get("/version")
def version() -> dict[str, int]:
    return {"version": API_VERSION}


@router.get("/model_list")
def model_list(store: Store, update: bool = True) -> dict[str, list[str]]:
    """The ControlNet folder's models as the extension names them, "name [hash]" (A1111's old 8-digit hash).
    `update` is accepted: the folder is read afresh on every request."""
    return {"model_list": [controlnet_model_title(entry.path) for entry in store.entries("controlnet")]}


@router.get("/module_list")
def module_list(alias_names: bool = False) -> dict:
    """The preprocessors brushwork runs: their internal names, or with `alias_names` the UI's; `module_detail`
    their sliders (the resolution first, where the module has one), as the extension's newest release lists them."""
    names = {label: label if alias_names else INTERNAL_NAMES.get(label, label) for label in PREPROCESSORS}
    # No module is model-free: the extension's model-free ones (reference, revision) are not offered.
    detail = {name: {"model_free": False, "sliders": _sliders(PREPROCESSORS[label])} for label, name in names.items()}
    return {"module_list": list(names.values()), "module_detail": detail}


def _sliders(preprocessor: Preprocessor) -> list[dict[str, float | str]]:
    shown = [RESOLUTION] if preprocessor.uses_resolution else []
    shown += [slider for slider in (preprocessor.threshold_a, preprocessor.threshold_b) if slider is not None]
    return [{"name": slider.name, "value": slider.default, "min": slider.minimum, "max": slider.maximum,
             "step": slider.step} for slider in shown]


@router.get("/settings")
def settings() -> dict[str, int]:
    return {"control_net_unit_count": UNIT_COUNT}


@router.post("/detect", response_model=DetectResponse)
def detect(body: DetectRequest, limits: ServerLimits, upscalers: ImageUpscalers, options: Options,
           server: ServerSettings) -> DetectResponse:
    """Each picture through the module, as the extension's detect: the map at the processor resolution on the
    picture's short side (modules without a resolution keep its size), not fitted to any generation size. Runs on
    the job queue's worker between jobs, as extras do: a learned module is a network."""
    try:
        module = module_name(body.controlnet_module)
    except BrushworkError as error:
        raise RecipeError(f"controlnet_module: {error}") from None
    if body.controlnet_input_images and body.controlnet_images:
        raise RecipeError("controlnet_input_images: give the pictures once (controlnet_images is webuiapi's name for it)")
    images = body.controlnet_input_images or body.controlnet_images
    if not images:
        raise RecipeError("controlnet_input_images: no image selected; send at least one picture")
    if len(images) > limits.max_batch:
        raise OverLimit(f"controlnet_input_images: {len(images)} pictures is over this server's limit of "
                        f"{limits.max_batch} per request (--max-batch)")
    preprocessor = PREPROCESSORS[module]
    thresholds = [checked_threshold(field, module, slider, None if value == -1 else value) for field, slider, value in (
        ("controlnet_threshold_a", preprocessor.threshold_a, body.controlnet_threshold_a),
        ("controlnet_threshold_b", preprocessor.threshold_b, body.controlnet_threshold_b))]
    resolution = DEFAULT_RESOLUTION if body.controlnet_processor_res == -1 else body.controlnet_processor_res
    low, high = RESOLUTION_RANGE
    if preprocessor.uses_resolution and not low <= resolution <= high:
        raise RecipeError(f"controlnet_processor_res: {resolution} is outside {low}..{high} (-1: {DEFAULT_RESOLUTION})")
    pictures = [decode_base64_image(image, f"controlnet_input_images[{n}]", limits)[1] for n, image in enumerate(images)]
    if preprocessor.uses_resolution:
        for picture in pictures:
            check_working_size(picture.size, resolution, limits, "controlnet_processor_res")

    def run(engine) -> list:
        return [preprocess(module, picture, resolution, *thresholds, annotators_dir=engine.controls.annotators_dir)
                for picture in pictures]

    samples = sample_settings(options, server, "extras")
    return DetectResponse(images=[sample_base64(image, samples) for image in upscalers.run(run)])
