"""AUTOMATIC1111's "parameters" text ("infotext"), written and read.

The layout is A1111's, so pictures made here paste into A1111 (and its forks) and back:

    a cyberpunk street, (brush stroke)
    Negative prompt: blurry, lowres
    Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x768, Model: v1-5, Version: brushwork 0.1.0

The prompt may span several lines, the `Negative prompt:` line is there only when the negative prompt is
not empty, and the last line holds `key: value` pairs; values with `,` `:` `"` or a newline are quoted the
way A1111 does it (a JSON string).

`parse_infotext` reads one back into a Recipe; `a1111_parameters` returns exactly what A1111's own parser
(`parse_generation_parameters`, behind its /sdapi/v1/png-info) returns for it, defaults and quirks included.
ControlNet units are written and read as the sd-webui-controlnet extension does (brushwork/control/infotext.py).
"""

from __future__ import annotations

import json
import math
import re

from packaging.version import InvalidVersion, Version
from pydantic import ValidationError

from brushwork import __version__
from brushwork.errors import RecipeError
from brushwork.prompts import parse_attention
from brushwork.recipe import Recipe, describe_validation_error
from brushwork.sampler_names import SAMPLER_NAMES, sampler_name_from_parts


NEGATIVE_PREFIX = "Negative prompt:"

# The keys format_infotext writes itself; extras may not reuse them, or parsing would be ambiguous.
STANDARD_KEYS = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
    "VAE hash", "VAE", "Clip skip", "Version",
)

# One `key: value` pair of the last line, read leniently (brushwork's own reading, `parse_params_line`): a
# value is either a JSON string (which may hold commas) or everything up to the next comma, trimmed.
_PAIR = re.compile(r'\s*(\w[\w \-/.+]*?)\s*:\s*("(?:\\.|[^\\"])*"|[^,]*?)\s*(?:,|$)')
# One pair exactly as A1111 (modules/infotext_utils.py, `re_param`) reads it: the key is a word character and
# at least one more word character, space, `-` or `/`; after the colon and any whitespace, the value is either
# a double-quoted string of at least one character (backslash escapes allowed) that ends the pair, or
# everything up to the next comma, untrimmed.
_A1111_PAIR = re.compile(
    r"""\s*
    (\w[\w \-/]+)
    :\s*
    ( "(?:\\.|[^\\"])+" | [^,]* )
    (?:,|$)""",
    re.VERBOSE,
)
# A1111's `re_imagesize`: a value that is exactly `<digits>x<digits>` becomes two keys, `<key>-1` and `<key>-2`.
_A1111_SIZE = re.compile(r"^(\d+)x(\d+)$")
# The keys brushwork writes must read back under A1111's rule (and not end with a space).
_KEY = re.compile(r"\w[\w \-/]*[\w\-/]")
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
    if recipe.eta_noise_seed_delta:
        extra["ENSD"] = str(recipe.eta_noise_seed_delta)
    if recipe.restore_faces:
        extra["Face restoration"] = recipe.restore_faces
        if recipe.restore_faces.lower() == "codeformer":
            extra["CodeFormer weight"] = format_number(recipe.codeformer_weight)
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
    if recipe.sd_upscale is not None:
        # A1111 writes the first two; it leaves the scale out (its Size is the tile size), so brushwork adds it.
        extra["SD upscale overlap"] = str(recipe.sd_upscale.overlap)
        extra["SD upscale upscaler"] = recipe.sd_upscale.upscaler
        extra["SD upscale scale"] = format_number(recipe.sd_upscale.scale)
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
    hires_keys = ("Hires upscale", "Hires resize", "Hires upscaler", "First pass size")
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
    if params.get("Face restoration"):
        fields["restore_faces"] = params["Face restoration"]
        weight = _number(params, "CodeFormer weight", float)
        if weight is not None:
            fields["codeformer_weight"] = weight
    delta = _number(params, "ENSD", int)
    if delta:
        fields["eta_noise_seed_delta"] = delta
    if params.get("Inpaint area") == "Only masked":
        fields["inpaint_full_res"] = True
        padding = _number(params, "Masked area padding", int)
        if padding is not None:
            fields["inpaint_full_res_padding"] = padding
    if "SD upscale overlap" in params or "SD upscale upscaler" in params:
        sd_upscale: dict[str, object] = {"upscaler": params.get("SD upscale upscaler") or "None"}
        overlap = _number(params, "SD upscale overlap", float)  # A1111 writes what the client sent: 64 or 64.0
        if overlap is not None:
            if not overlap.is_integer():
                raise RecipeError(f"infotext field 'SD upscale overlap' must be a whole number, got {overlap:g}")
            sd_upscale["overlap"] = int(overlap)
        scale = _number(params, "SD upscale scale", float)
        if scale is not None:
            sd_upscale["scale"] = scale
        fields["sd_upscale"] = sd_upscale  # A1111's texts have no scale: its default, 2
    from brushwork.control.infotext import control_units_from_params

    units = control_units_from_params(params, hires="hires" in fields)
    if units:
        fields["control_units"] = units
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


def _join_line(text: str, line: str) -> str:
    # A1111 adds a line with a newline before it, unless the text so far is empty: leading empty lines vanish,
    # inner and trailing ones stay.
    return f"{text}\n{line}" if text else line


def _prompt_and_negative(lines: list[str]) -> tuple[str, str]:
    """A1111's reading of the lines above the parameters: each line is stripped; from the first line that
    starts with "Negative prompt:" on, lines belong to the negative prompt, and that prefix (and the
    whitespace after it) is cut from every line that starts with it. A prompt line that itself starts with
    those words cannot be told apart (A1111 has the same limit)."""
    prompt = negative = ""
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        if in_negative:
            negative = _join_line(negative, line)
        else:
            prompt = _join_line(prompt, line)
    return prompt, negative


def _lines_and_parameters(lines: list[str]) -> tuple[list[str], str]:
    # The last line holds the parameters only when A1111's pair rule finds at least `_MIN_PAIRS` in it.
    if len(_A1111_PAIR.findall(lines[-1])) >= _MIN_PAIRS:
        return lines[:-1], lines[-1]
    return lines, ""


def split_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, parameters) of an infotext, without interpreting any value.

    The prompt, the negative prompt and which line holds the parameters are A1111's reading (see
    `a1111_parameters`); the pairs are read with `parse_params_line`, which also accepts keys A1111 would not
    (one letter, `.` or `+`) and trims values. CRLF and a lone CR both end a line here.
    """
    lines, params_line = _lines_and_parameters(text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n"))
    prompt, negative = _prompt_and_negative(lines)
    return prompt, negative, parse_params_line(params_line) if params_line else {}


# ---- A1111's parse_generation_parameters ---------------------------------------------------------------

# What a fresh A1111 (v1.10) install fills in for keys the infotext lacks, in its order, in two groups: the
# old hires fix is restored between them. Values are typed as A1111 has them (strings, ints, False).
_A1111_DEFAULTS_BEFORE_OLD_HIRES: tuple[tuple[str, object], ...] = (
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
_A1111_DEFAULTS_AFTER_OLD_HIRES: tuple[tuple[str, object], ...] = (
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)
# A1111's infotext_versions: the versions before which a pasted infotext turns compatibility options on.
_V1_6_0 = Version("1.6.0")
_V1_7_0_TSNR = Version("1.7.0-225")  # 1.7.0.post225: the zero-terminal-SNR change
_V1_8_0 = Version("1.8.0")
_V1_8_0_HIRES_STYLES = Version("1.8.0-139")  # from here on, Hires prompts equal to the prompt are written too
_VERSION_HEAD = re.compile(r"([^-]+-[^-]+)-.*")  # "v1.7.0-225-g1234abcd" is read as "v1.7.0-225"


def _a1111_version(text: object) -> Version | None:
    """The `Version` field as A1111 compares it, or None where it cannot (a fork's "f2.0.1v1.10.1-...", ours)."""
    if not isinstance(text, str):
        return None
    head = _VERSION_HEAD.match(text)
    try:
        return Version(head.group(1) if head else text)
    except InvalidVersion:
        return None


def _old_hires_first_pass(width: int, height: int) -> tuple[int, int]:
    # A1111's old_hires_fix_first_pass_dimensions: about 512x512 pixels, the aspect kept, sides rounded up to 64.
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def _restore_old_hires_fix(res: dict[str, object]) -> None:
    """An infotext from before hires fix had its own size fields names the first pass apart ("First pass
    size", 0x0 for automatic): then `Size` was the final size. Read as A1111 does, with its default option
    (use_old_hires_fix_width_height off): Size-1/-2 become the first pass, Hires resize-1/-2 the final size."""
    first_width, first_height = res.get("First pass size-1"), res.get("First pass size-2")
    if first_width is None or first_height is None:
        return
    try:
        first_width, first_height = int(first_width), int(first_height)  # type: ignore[call-overload]
        width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))  # type: ignore[call-overload]
    except ValueError:
        return  # only a literal "Size-1: abc" pair gets here; A1111 fails the whole request on it
    if first_width == 0 or first_height == 0:
        first_width, first_height = _old_hires_first_pass(width, height)
    res["Size-1"], res["Size-2"] = first_width, first_height
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def _uses_emphasis(prompt: str, negative: str) -> bool:
    """Whether A1111 sees emphasis in the prompts: any entry of parse_attention (BREAK aside) not weighted 1."""
    try:
        entries = parse_attention(prompt) + parse_attention(negative)
    except RecipeError:
        return False  # a malformed weight such as "(a:1.2.3)": A1111 fails the whole request on it
    return any(weight != 1.0 and text != "BREAK" for text, weight in entries)


def a1111_parameters(text: str) -> dict[str, object]:
    """What AUTOMATIC1111 (v1.10, a fresh install) returns for this infotext from `parse_generation_parameters`,
    which is the `parameters` of its /sdapi/v1/png-info: every key, every default, in A1111's order and types.

    1. The text is stripped and split at `\n`; its last line holds the parameters when A1111's pair rule finds
       three pairs there, otherwise it is one more prompt line.
    2. Prompt and negative prompt: see `_prompt_and_negative`.
    3. Each pair in order: a value in double quotes is read as a JSON string (kept as it is if that fails); an
       empty value is dropped (A1111 fails on it and skips the pair); a value `<digits>x<digits>` becomes
       `<key>-1` and `<key>-2` (strings); any other value is kept, a string. A repeated key keeps its first
       place and its last value.
    4. Hires prompt / Hires negative prompt (when one is there and the Version is unreadable or after
       1.8.0-139): one equal to the prompt (negative prompt) becomes "", the other one is set too.
    5. "Prompt" and "Negative prompt"; the defaults (Clip skip "1", Hires resize-1/-2 0, ...); `Hypernet`
       appended to the prompt as `<hypernet:name:strength>`; the old hires fix restored (ints); Cache FP16
       weight for LoRA False when FP8 weight is not "Disable"; Emphasis "Original" when either prompt uses
       emphasis; Refiner switch by sampling steps False.
    6. A1111's version back-compatibility (its default `auto_backcompat`): before 1.6.0 a prompt with `[`
       gets Old prompt editing timelines and DDIM/PLMS get Pad conds v0; before 1.7.0-225 Downcast
       alphas_cumprod; before 1.8.0 a Refiner gets Refiner switch by sampling steps True.

    A fresh install has no styles, nothing in infotext_skip_pasting and no LoRA on disk, so style extraction,
    skipped fields and the LoRA alias callback change nothing here.
    """
    # 1-2. The lines.
    lines, params_line = _lines_and_parameters(text.strip().split("\n"))
    prompt, negative = _prompt_and_negative(lines)

    # 3. The pairs.
    res: dict[str, object] = {}
    for key, value in _A1111_PAIR.findall(params_line):
        if not value:
            continue
        if value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        size = _A1111_SIZE.match(value)
        if size is not None:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value

    # 4. Hires prompts that only repeat the prompts.
    if "Hires prompt" in res or "Hires negative prompt" in res:
        version = _a1111_version(res.get("Version"))
        if version is None or version > _V1_8_0_HIRES_STYLES:
            hires_prompt = res.get("Hires prompt", prompt)
            hires_negative = res.get("Hires negative prompt", negative)
            res["Hires prompt"] = "" if hires_prompt == prompt else hires_prompt
            res["Hires negative prompt"] = "" if hires_negative == negative else hires_negative

    # 5. The prompts and the defaults.
    res["Prompt"] = prompt
    res["Negative prompt"] = negative
    res.setdefault("Clip skip", "1")
    if "Hypernet" in res:
        res["Prompt"] = f"{res['Prompt']}<hypernet:{res['Hypernet']}:{res.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    for key, default in _A1111_DEFAULTS_BEFORE_OLD_HIRES:
        res.setdefault(key, default)
    _restore_old_hires_fix(res)
    for key, default in _A1111_DEFAULTS_AFTER_OLD_HIRES:
        res.setdefault(key, default)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    if "Emphasis" not in res and _uses_emphasis(prompt, negative):
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", False)

    # 6. Back-compatibility by version.
    version = _a1111_version(res.get("Version"))
    if version is not None:
        if version < _V1_6_0 and "[" in str(res["Prompt"]):
            res["Old prompt editing timelines"] = True
        if version < _V1_6_0 and res.get("Sampler") in ("DDIM", "PLMS"):
            res["Pad conds v0"] = True
        if version < _V1_7_0_TSNR:
            res["Downcast alphas_cumprod"] = True
        if version < _V1_8_0 and res.get("Refiner"):
            res["Refiner switch by sampling steps"] = True
    return res


def _number(params: dict[str, str], key: str, kind: type[int] | type[float]) -> int | float | None:
    if key not in params:
        return None
    try:
        return kind(params[key])
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise RecipeError(f"infotext field {key!r} must be {what}, got {params[key]!r}") from None


def _restore_old_hires_recipe(fields: dict[str, object], first_pass: str) -> None:
    """The old hires fix as `a1111_parameters` reads it: `Size` was the final size and `First pass size` (0x0:
    worked out from `Size`) the first pass, so they become the hires resize and the recipe's size."""
    size = _SIZE.match(first_pass)
    if size is None:
        raise RecipeError(f"infotext field 'First pass size' must look like 512x512, got {first_pass!r}")
    width, height = int(fields.get("width", 512)), int(fields.get("height", 512))  # type: ignore[call-overload]
    first_width, first_height = int(size.group(1)), int(size.group(2))
    if first_width == 0 or first_height == 0:
        first_width, first_height = _old_hires_first_pass(width, height)
    fields["width"], fields["height"] = first_width, first_height
    hires = fields["hires"]
    assert isinstance(hires, dict)  # _extras_to_fields makes one whenever "First pass size" is there
    hires["resize_width"], hires["resize_height"] = width, height


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
        if sampler not in SAMPLER_NAMES:
            known = ", ".join(SAMPLER_NAMES)
            raise RecipeError(f"unknown sampler {sampler!r} in the infotext; brushwork knows: {known}")
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
    if "First pass size" in params:
        _restore_old_hires_recipe(fields, params["First pass size"])

    try:
        recipe = Recipe(**fields)
    except ValidationError as error:
        raise RecipeError(f"infotext has a value brushwork cannot use: {describe_validation_error(error)}") from None
    return recipe, params
