"""The sd-webui-controlnet extension's units in A1111's txt2img and img2img requests.

Clients send `alwayson_scripts: {"controlnet": {"args": [unit, ...]}}` (any case of the script's name, as A1111
finds it), each unit a JSON object with the extension's field names (its `ControlNetUnit`, and the old names its
`to_processing_unit` still takes). This module turns them into Recipe control units, checks what the shared
admission (`limits.admit`) does not, names its refusals as the request names the units, and makes the detected
maps the extension answers with after the pictures.

As in the extension, a unit that is not `enabled`, or whose model is "None", takes no part, and fields it does
not know are ignored. Fields that change no picture (low_vram, guessmode, save_detected_map ...) are accepted; a
setting brushwork cannot honour is a RecipeError naming it (`alwayson_scripts.controlnet.args[0].mask`).
"""

from __future__ import annotations

import base64
import io
from typing import Any, Callable

from PIL import Image
from pydantic import ValidationError

from brushwork.control.preprocessors import PREPROCESSORS, Slider, module_name, pixel_perfect_resolution
from brushwork.engine.hires import hires_size
from brushwork.errors import BrushworkError, RecipeError
from brushwork.images import load_image
from brushwork.models.store import ModelStore
from brushwork.recipe import ControlUnit, Recipe
from brushwork.serve.api.sdapi_schemas import GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from brushwork.serve.limits import OverLimit
from brushwork.serve.settings import Limits

SCRIPT = "controlnet"  # A1111 finds alwayson scripts by their lower-cased title
FIELD = "alwayson_scripts.controlnet.args"
NO_MODEL = (None, "", "None")
# to_processing_unit's old field names, still sent by clients written for them.
OLD_NAMES = {"input_image": "image", "guidance": "guidance_end"}
# Extension features brushwork lacks: accepted only when empty (null, "" or []).
UNSUPPORTED = {
    "mask": "unit masks (sketch, inpaint)", "mask_image": "unit masks (sketch, inpaint)",
    "advanced_weighting": "per-layer weights", "effective_region_mask": "effective region masks",
    "ipadapter_input": "IP-Adapter inputs", "batch_images": "batch folders",
}
EMPTY = (None, "", [])
ALL_PASSES = "Both"  # hr_option: brushwork's units act in both passes of the hires fix


def unit_args(scripts: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(position in args, unit) of the ControlNet units that take part: enabled and with a model."""
    taking_part = []
    for index, raw in enumerate(_script_args(scripts)):
        where = f"{FIELD}[{index}]"
        if raw is None:
            continue  # the extension skips empty slots too
        if not isinstance(raw, dict):
            raise RecipeError(f"{where}: give each unit as a JSON object of named fields (module, model, image, "
                              "weight ...); units as lists of positional values (the extension's first API) are "
                              "not supported")
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise RecipeError(f"{where}.enabled: must be true or false, got {enabled!r}")
        if enabled and raw.get("model", "None") not in NO_MODEL:
            taking_part.append((index, raw))
    return taking_part


def _script_args(scripts: dict[str, Any]) -> list[Any]:
    found = [value for name, value in scripts.items() if name.lower() == SCRIPT]
    if not found:
        return []
    if len(found) > 1:
        raise RecipeError("alwayson_scripts: the ControlNet script is given twice (its name in two cases)")
    if not isinstance(found[0], dict) or not isinstance(found[0].get("args", []), list):
        raise RecipeError('alwayson_scripts.controlnet: give {"args": [unit, ...]}')
    return found[0].get("args", [])


def control_units(request: GenerationRequest) -> list[ControlUnit]:
    """The request's ControlNet units as Recipe units, their pictures as sent (`limits.admit` decodes them)."""
    return [_unit(f"{FIELD}[{index}]", raw, request) for index, raw in unit_args(request.alwayson_scripts)]


def _unit(where: str, raw: dict[str, Any], request: GenerationRequest) -> ControlUnit:
    for old, new in OLD_NAMES.items():
        if old in raw and new in raw:
            raise RecipeError(f"{where}: give {new} or its old name {old}, not both")
    fields = {OLD_NAMES.get(name, name): value for name, value in raw.items()}
    for name, what in UNSUPPORTED.items():
        if fields.get(name) not in EMPTY:
            raise RecipeError(f"{where}.{name}: {what} are not supported by brushwork; leave it out")
    _check_passes(where, fields, request)
    try:
        module = module_name("none" if fields.get("module") is None else str(fields["module"]))
    except BrushworkError as error:
        raise RecipeError(f"{where}.module: {error}") from None
    settings = {name: fields[name] for name in ControlUnit.model_fields if name in fields}
    settings["image"] = _picture(where, fields.get("image"))
    settings["module"] = fields.get("module") or "none"
    if settings.get("processor_res") == -1:
        del settings["processor_res"]  # the extension's "the module's default"
    for name in ("threshold_a", "threshold_b"):
        if settings.get(name) == -1:
            settings[name] = None
    try:
        unit = ControlUnit(**settings)
    except ValidationError as error:
        raise RecipeError("; ".join(f"{where}.{'.'.join(str(part) for part in item['loc'])}: "
                                    f"{item['msg'].removeprefix('Value error, ')}" for item in error.errors())) from None
    return unit.model_copy(update=_thresholds(where, unit, module))


def _check_passes(where: str, fields: dict[str, Any], request: GenerationRequest) -> None:
    """Refuse the extension's per-pass settings where they would make its picture differ from brushwork's."""
    hr_option = fields.get("hr_option", ALL_PASSES)
    if isinstance(request, Txt2ImgRequest) and request.enable_hr and hr_option != ALL_PASSES:
        raise RecipeError(f"{where}.hr_option: {hr_option!r} is not supported by brushwork, whose units act in both "
                          f"passes of the hires fix; send {ALL_PASSES!r}")
    if isinstance(request, Img2ImgRequest) and request.mask and request.inpaint_full_res:
        raise RecipeError(f"{where}: units with 'only masked' inpainting are not supported by brushwork (the "
                          "extension crops each unit's picture around the mask); set inpaint_full_res to false")


def _picture(where: str, value: Any) -> str | None:
    """The unit's picture as sent (base64 or a data URL), from any of the extension's forms: a string, {"image",
    "mask"} or [image, mask]; None when there is none (img2img then uses its init image)."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], dict):
            value = value[0]
        elif len(value) == 2 and not any(isinstance(part, dict) for part in value):
            value = {"image": value[0], "mask": value[1]}
        else:
            raise RecipeError(f"{where}.image: brushwork takes one picture per unit, got {len(value)}")
    if isinstance(value, dict):
        if value.get("mask") not in EMPTY:
            raise RecipeError(f"{where}.image.mask: {UNSUPPORTED['mask']} are not supported by brushwork; leave it out")
        value = value.get("image")
    if value in EMPTY:
        return None
    if not isinstance(value, str):
        raise RecipeError(f"{where}.image: send the picture as base64 or a data: URL")
    return value


def _thresholds(where: str, unit: ControlUnit, module: str) -> dict[str, float | None]:
    preprocessor = PREPROCESSORS[module]
    return {name: checked_threshold(f"{where}.{name}", module, slider, getattr(unit, name))
            for name, slider in (("threshold_a", preprocessor.threshold_a), ("threshold_b", preprocessor.threshold_b))}


def checked_threshold(field: str, module: str, slider: Slider | None, value: float | None) -> float | None:
    """A threshold checked against its module's slider (None: the slider's default). One the module has no
    slider for changes nothing (clients send both for every unit) and becomes None."""
    if slider is None or value is None:
        return None
    if not slider.minimum <= value <= slider.maximum:  # also refuses NaN
        raise RecipeError(f"{field}: {value:g} is outside {module}'s {slider.name} range "
                          f"{slider.minimum:g}..{slider.maximum:g} (-1: its default, {slider.default:g})")
    return value


def check_control_models(recipe: Recipe, request: GenerationRequest, store: ModelStore) -> None:
    """Each unit's model found in ControlNet/, or a RecipeError (422) naming the unit's field and the choices
    (`admit` finds them too, but its message cannot say which of the request's units it means)."""
    for where, unit in zip(_unit_fields(request), recipe.control_units):
        try:
            store.resolve("controlnet", unit.model)
        except BrushworkError as error:
            raise RecipeError(f"{where}.model: {error}") from None


def control_unit_wording(message: str, request: GenerationRequest) -> str:
    """A Recipe-level message (`control_units.1.image: ...`) with the unit named as the request names it
    (`alwayson_scripts.controlnet.args[3].image: ...`: disabled units and those without a model are not in
    the Recipe). The highest numbers first, so control_units.1 never rewrites control_units.10."""
    for number, where in reversed(list(enumerate(_unit_fields(request)))):
        message = message.replace(f"control_units.{number}", where)
    return message


def _unit_fields(request: GenerationRequest) -> list[str]:
    return [f"{FIELD}[{index}]" for index, _ in unit_args(request.alwayson_scripts)]


def check_control_pictures(recipe: Recipe, request: GenerationRequest, limits: Limits) -> None:
    """After `admit` (which decodes the units' pictures, refusing them as it refuses the init image): every unit
    has a picture, and each preprocessor's working picture fits the size limit in every pass."""
    targets = [(recipe.width, recipe.height)] + ([hires_size(recipe)] if recipe.hires is not None else [])
    for where, unit in zip(_unit_fields(request), recipe.control_units):
        picture = unit.image if unit.image is not None else recipe.init_image
        if picture is None:
            raise RecipeError(f"{where}.image: give the unit a picture (input_image); only img2img falls back to "
                              "its init image")
        size = _inline_size(picture)
        for target in targets:
            _check_working_size(where, unit, size, target, limits)


def _inline_size(picture: str) -> tuple[int, int]:
    # `admit` has checked the picture whole (a data URL, or base64); its header is enough for the size.
    payload = picture.partition(",")[2] if picture.startswith("data:") else picture
    return Image.open(io.BytesIO(base64.b64decode(payload))).size


def _check_working_size(where: str, unit: ControlUnit, size: tuple[int, int], target: tuple[int, int],
                        limits: Limits) -> None:
    if not PREPROCESSORS[module_name(unit.module)].uses_resolution:
        return  # the map keeps the picture's size
    if unit.pixel_perfect:
        resolution = pixel_perfect_resolution(size, target, unit.resize_mode)
        check_working_size(size, resolution, limits, f"{where}.pixel_perfect (for {target[0]}x{target[1]})")
    else:
        check_working_size(size, unit.processor_res, limits, f"{where}.processor_res")


def check_working_size(size: tuple[int, int], resolution: int, limits: Limits, field: str) -> None:
    """Refuse a preprocessor resolution whose working picture (this picture scaled to `resolution` on its short
    side) would be longer than --max-image-side: a long narrow picture at a high resolution is a huge one."""
    scale = resolution / min(size)
    width, height = round(size[0] * scale), round(size[1] * scale)
    if max(width, height) > limits.max_image_side:
        raise OverLimit(f"{field}: at resolution {resolution} the preprocessor works on a {width}x{height} picture, "
                        f"over this server's limit of {limits.max_image_side} pixels on a side (--max-image-side); "
                        "ask for a lower resolution")


def detected_maps(recipe: Recipe, request: GenerationRequest, run: Callable[[Callable], Any]) -> list[Image.Image]:
    """The detected maps the extension answers with after the pictures: each unit's control map at the picture's
    size, unless its save_detected_map is false. `run` runs them where the engine is used (the job queue's
    worker), since a learned preprocessor is a network."""
    wanted = [unit for unit, (_, raw) in zip(recipe.control_units, unit_args(request.alwayson_scripts))
              if raw.get("save_detected_map", True) is not False]
    if not wanted:
        return []

    def detect(engine) -> list[Image.Image]:
        return [engine.controls.detect(unit, load_image(unit.image or recipe.init_image, what="control image"),
                                       recipe.width, recipe.height) for unit in wanted]

    return run(detect)
