"""AUTOMATIC1111's "parameters" text ("infotext"), written and read.

The layout is A1111's, so pictures made here paste into A1111 (and its forks) and back:

    a cyberpunk street, (brush stroke)
    Negative prompt: blurry, lowres
    Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x768, Model: v1-5, Version: brushwork 0.1.0

The prompt may span several lines, the `Negative prompt:` line is there only when the negative prompt is
not empty, and the last line holds `key: value` pairs; values with `,` `:` `"` or a newline are quoted the
way A1111 does it (a JSON string).
"""

from __future__ import annotations

import json
import re

from pydantic import ValidationError

from brushwork import __version__
from brushwork.engine.samplers import SAMPLERS, sampler_name_from_parts
from brushwork.errors import RecipeError
from brushwork.recipe import Recipe, describe_validation_error

NEGATIVE_PREFIX = "Negative prompt:"

# The keys format_infotext writes itself; extras may not reuse them, or parsing would be ambiguous.
STANDARD_KEYS = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
    "VAE hash", "VAE", "Clip skip", "Version",
)

# One `key: value` pair of the last line. Like A1111's `re_param`, a value is either a JSON string (which
# may hold commas) or everything up to the next comma; keys are words with spaces, `-`, `/`, `.` or `+`.
_PAIR = re.compile(r'\s*(\w[\w \-/.+]*?)\s*:\s*("(?:\\.|[^\\"])*"|[^,]*?)\s*(?:,|$)')
_KEY = re.compile(r"\w[\w \-/.+]*(?<! )")
_SIZE = re.compile(r"^\s*(\d+)\s*[x×]\s*(\d+)\s*$")
# A1111 treats the last line as parameters only when it holds at least this many pairs, so a last prompt
# line such as "style: noir" is not mistaken for settings.
_MIN_PAIRS = 3


def quote(value: str) -> str:
    """A value as A1111 writes it: as-is, or as a JSON string when it would break the `k: v, ...` line."""
    if any(ch in value for ch in ',:"\n\r'):
        return json.dumps(value, ensure_ascii=False)
    return value


def unquote(value: str) -> str:
    """The inverse of `quote`; a value that merely looks quoted but is not valid JSON is kept verbatim."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


def format_number(value: float) -> str:
    """7.0 -> "7", 7.5 -> "7.5": what A1111 writes for CFG scale."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def format_infotext(
    recipe: Recipe,
    *,
    seed: int,
    width: int,
    height: int,
    model_name: str | None,
    model_hash: str | None,
    vae_name: str | None = None,
    vae_hash: str | None = None,
    extra: dict[str, str] | None = None,
) -> str:
    """The infotext for one picture made from `recipe`.

    `seed`, `width` and `height` are what this picture actually used (the recipe may say -1 / None), and
    the model and VAE are named by the caller, which knows the files it loaded. `extra` pairs go after
    the standard fields and before `Version`, as A1111 places its extra generation parameters.
    """
    # Our sampler names carry the schedule ("DPM++ 2M Karras"): old A1111 reads them as-is and 1.9+
    # splits the suffix off itself, so writing the joined name loses nothing in either.
    fields: dict[str, str | None] = {
        "Steps": str(recipe.steps),
        "Sampler": recipe.sampler,
        "CFG scale": format_number(recipe.cfg_scale),
        "Seed": str(seed),
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model_name,
        "VAE hash": vae_hash,
        "VAE": vae_name,
        "Clip skip": str(recipe.clip_skip) if recipe.clip_skip != 1 else None,
    }
    for key, value in (extra or {}).items():
        if key in STANDARD_KEYS or not _KEY.fullmatch(key):
            raise ValueError(f"extra infotext key {key!r} is reserved or not a valid A1111 key")
        fields[key] = value
    fields["Version"] = f"brushwork {__version__}"

    params = ", ".join(f"{key}: {quote(str(value))}" for key, value in fields.items() if value is not None)
    lines = [recipe.prompt] if recipe.prompt else []
    if recipe.negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {recipe.negative_prompt}")
    lines.append(params)
    return "\n".join(lines)


def recipe_extras(recipe: Recipe) -> dict[str, str]:
    """Tiling and the img2img, inpainting and hires fix settings under A1111's infotext names."""
    extra: dict[str, str] = {"Tiling": "True"} if recipe.tiling else {}
    if recipe.is_img2img:
        extra["Denoising strength"] = format_number(recipe.denoising_strength)
        if recipe.mask is not None or recipe.outpaint is not None:
            extra["Mask blur"] = str(recipe.mask_blur)
            extra["Masked content"] = recipe.inpainting_fill
        if recipe.mask is not None and recipe.inpainting_mask_invert:
            extra["Mask mode"] = "Inpaint not masked"
        if recipe.mask is not None and recipe.inpaint_full_res:
            extra["Inpaint area"] = "Only masked"
            extra["Masked area padding"] = str(recipe.inpaint_full_res_padding)
        if recipe.outpaint is not None:
            sides = recipe.outpaint
            extra["Outpaint"] = f"left {sides.left} right {sides.right} top {sides.top} bottom {sides.bottom}"
    hires = recipe.hires
    if hires is not None:
        extra["Denoising strength"] = format_number(hires.denoising_strength)
        if hires.resize_width or hires.resize_height:
            extra["Hires resize"] = f"{hires.resize_width}x{hires.resize_height}"
        else:
            extra["Hires upscale"] = format_number(hires.scale)
        if hires.steps:
            extra["Hires steps"] = str(hires.steps)
        extra["Hires upscaler"] = hires.upscaler
        for key, value in (("Hires prompt", hires.prompt), ("Hires negative prompt", hires.negative_prompt),
                           ("Hires sampler", hires.sampler)):
            if value is not None:
                extra[key] = value
    return extra


def _extras_to_fields(params: dict[str, str]) -> dict[str, object]:
    """The inverse of `recipe_extras`, for the fields a Recipe can hold without its images."""
    fields: dict[str, object] = {}
    strength = _number(params, "Denoising strength", float)
    hires_keys = ("Hires upscale", "Hires resize", "Hires upscaler")
    if any(key in params for key in hires_keys):
        hires: dict[str, object] = {"upscaler": params.get("Hires upscaler", "Latent")}
        scale = _number(params, "Hires upscale", float)
        if scale is not None:
            hires["scale"] = scale
        if "Hires resize" in params:
            size = _SIZE.match(params["Hires resize"])
            if size is None:
                raise RecipeError(f"infotext field 'Hires resize' must look like 1024x1024, got {params['Hires resize']!r}")
            hires["resize_width"], hires["resize_height"] = int(size.group(1)), int(size.group(2))
        for key, name, kind in (("Hires steps", "steps", int),):
            value = _number(params, key, kind)
            if value is not None:
                hires[name] = value
        if strength is not None:
            hires["denoising_strength"] = strength
        for key, name in (("Hires prompt", "prompt"), ("Hires negative prompt", "negative_prompt"),
                          ("Hires sampler", "sampler")):
            if key in params:
                hires[name] = params[key]
        fields["hires"] = hires
    elif strength is not None:
        fields["denoising_strength"] = strength
    blur = _number(params, "Mask blur", int)
    if blur is not None:
        fields["mask_blur"] = blur
    if params.get("Masked content") in ("fill", "original", "latent noise", "latent nothing"):
        fields["inpainting_fill"] = params["Masked content"]
    if params.get("Mask mode") == "Inpaint not masked":
        fields["inpainting_mask_invert"] = True
    if params.get("Tiling") == "True":
        fields["tiling"] = True
    if params.get("Inpaint area") == "Only masked":
        fields["inpaint_full_res"] = True
        padding = _number(params, "Masked area padding", int)
        if padding is not None:
            fields["inpaint_full_res_padding"] = padding
    return fields


def parse_params_line(line: str) -> dict[str, str]:
    """The `key: value` pairs of an infotext's last line, values unquoted; a repeated key keeps its last value."""
    pairs: dict[str, str] = {}
    position = 0
    while position < len(line):
        match = _PAIR.match(line, position)
        if match is None or match.end() == position:
            # Text that is not a pair (A1111 writes a few bare flags): skip to the next comma.
            comma = line.find(",", position)
            if comma < 0:
                break
            position = comma + 1
            continue
        pairs[match.group(1)] = unquote(match.group(2))
        position = match.end()
    return pairs


def split_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, parameters) of an infotext, without interpreting any value."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    params: dict[str, str] = {}
    if len(_PAIR.findall(lines[-1])) >= _MIN_PAIRS:
        params = parse_params_line(lines.pop())

    # Everything after the first line that starts with "Negative prompt:" is the negative prompt, as in
    # A1111; a prompt line that itself starts with those words cannot be told apart (A1111 has the same limit).
    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in lines:
        if negative_lines is None and line.startswith(NEGATIVE_PREFIX):
            negative_lines = [line[len(NEGATIVE_PREFIX):]]
        elif negative_lines is not None:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    negative = "\n".join(negative_lines).strip() if negative_lines is not None else ""
    return "\n".join(prompt_lines).strip(), negative, params


def _number(params: dict[str, str], key: str, kind: type[int] | type[float]) -> int | float | None:
    if key not in params:
        return None
    try:
        return kind(params[key])
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise RecipeError(f"infotext field {key!r} must be {what}, got {params[key]!r}") from None


def parse_infotext(text: str) -> tuple[Recipe, dict[str, str]]:
    """A Recipe from an infotext (ours or one A1111 wrote), and every `key: value` pair found.

    The dict keeps the raw (unquoted) values, so fields the Recipe does not model (hashes, Hires fix,
    LoRA hashes, ...) are not lost. A `Schedule type` our samplers cannot express is dropped from the
    sampler (the dict still holds it). Raises RecipeError for an empty text, an unknown sampler or a value
    the Recipe rejects.
    """
    if not text or not text.strip():
        raise RecipeError("the infotext is empty; paste the whole 'parameters' text of a picture")
    prompt, negative, params = split_infotext(text)

    fields: dict[str, object] = {"prompt": prompt, "negative_prompt": negative}
    if "Sampler" in params:
        sampler = sampler_name_from_parts(params["Sampler"], params.get("Schedule type"))
        if sampler not in SAMPLERS:
            raise RecipeError(f"unknown sampler {sampler!r} in the infotext; brushwork knows: {', '.join(SAMPLERS)}")
        fields["sampler"] = sampler
    for key, name, kind in (
        ("Steps", "steps", int),
        ("CFG scale", "cfg_scale", float),
        ("Seed", "seed", int),
        ("Clip skip", "clip_skip", int),
    ):
        value = _number(params, key, kind)
        if value is not None:
            fields[name] = value
    if "Size" in params:
        size = _SIZE.match(params["Size"])
        if size is None:
            raise RecipeError(f"infotext field 'Size' must look like 512x768, got {params['Size']!r}")
        fields["width"], fields["height"] = int(size.group(1)), int(size.group(2))
    for key, name in (("Model", "model"), ("VAE", "vae")):
        if params.get(key):
            fields[name] = params[key]
    fields.update(_extras_to_fields(params))

    try:
        recipe = Recipe(**fields)
    except ValidationError as error:
        raise RecipeError(f"infotext has a value brushwork cannot use: {describe_validation_error(error)}") from None
    return recipe, params
