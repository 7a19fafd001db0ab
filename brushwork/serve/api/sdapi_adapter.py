"""A1111 `/sdapi/v1` payloads mapped to Recipes, and finished jobs mapped back to A1111's answers.

Pure functions (no HTTP): the routes in `sdapi.py` parse, call these, and submit to the job queue.
A value brushwork cannot honour is refused with a RecipeError naming the A1111 field, never dropped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from brushwork import __version__
from brushwork.engine.samplers import SAMPLERS
from brushwork.errors import RecipeError
from brushwork.infotext import a1111_parameters, split_infotext
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe
from brushwork.serve.api.sdapi_controlnet import FIELD as CONTROLNET_ARGS, SCRIPT as CONTROLNET, control_units
from brushwork.serve.api.sdapi_schemas import GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from brushwork.serve.deps import WebuiOptions
from brushwork.serve.jobs import Job
from brushwork.upscale import BUILTIN

# A1111's sampler aliases (k-diffusion's function names), so old scripts' names still work.
SAMPLER_ALIASES: dict[str, list[str]] = {
    "Euler a": ["k_euler_a", "k_euler_ancestral"], "Euler": ["k_euler"], "LMS": ["k_lms"], "Heun": ["k_heun"],
    "DPM2": ["k_dpm_2"], "DPM2 a": ["k_dpm_2_a"], "DPM++ 2M": ["k_dpmpp_2m"], "DPM++ SDE": ["k_dpmpp_sde"],
    "DPM++ 2M SDE": ["k_dpmpp_2m_sde"], "DPM++ 3M SDE": ["k_dpmpp_3m_sde"], "LMS Karras": ["k_lms_ka"],
    "DPM2 Karras": ["k_dpm_2_ka"], "DPM2 a Karras": ["k_dpm_2_a_ka"], "DPM++ 2M Karras": ["k_dpmpp_2m_ka"],
    "DPM++ SDE Karras": ["k_dpmpp_sde_ka"], "DPM++ 2M SDE Karras": ["k_dpmpp_2m_sde_ka"],
    "DPM++ 3M SDE Karras": ["k_dpmpp_3m_sde_ka"], "DDIM": ["ddim"], "PLMS": ["plms"], "UniPC": ["unipc"], "LCM": ["k_lcm"],
}
# A1111 1.9+ schedule types our samplers can express: the suffix each adds to a sampler name.
SCHEDULERS = {"automatic": "", "uniform": "", "karras": " Karras"}
RESIZE_MODES = {0: "just resize", 1: "crop and resize", 2: "resize and fill", 3: "just resize"}
INPAINTING_FILL = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}
SAME = (None, "", "Use same sampler", "Use same scheduler", "Use same checkpoint")
NO_VAE = (None, "", "Automatic", "None")
HEX_HASH = re.compile(r"[0-9a-f]{10}|[0-9a-f]{64}")  # A1111's short hash (sha256[:10]) or the full sha256
# Recipe fields as the A1111 request names them, for error messages.
A1111_NAMES = {
    "batch_count": "n_iter", "sampler": "sampler_name", "clip_skip": "override_settings.CLIP_stop_at_last_layers",
    "model": "override_settings.sd_model_checkpoint", "vae": "override_settings.sd_vae", "hires.scale": "hr_scale",
    "hires.resize_width": "hr_resize_x", "hires.resize_height": "hr_resize_y", "hires.upscaler": "hr_upscaler",
    "hires.steps": "hr_second_pass_steps", "hires.denoising_strength": "denoising_strength",
    "hires.sampler": "hr_sampler_name", "init_image": "init_images", "inpaint_full_res": "inpaint_full_res",
    "sd_upscale.overlap": "script_args[1] (overlap)", "sd_upscale.upscaler": "script_args[2] (upscaler)",
    "sd_upscale.scale": "script_args[3] (scale)", "sd_upscale.batch_size": "batch_size",
    "restore_faces": "restore_faces", "codeformer_weight": "override_settings.code_former_weight",
    "control_units": CONTROLNET_ARGS,
}
# The A1111 scripts this server runs, by A1111's name for them (the lower-cased title), per route.
SD_UPSCALE = "sd upscale"
SCRIPTS: dict[str, list[str]] = {"txt2img": [], "img2img": [SD_UPSCALE]}
SD_UPSCALE_DEFAULTS = ["", 64, "None", 2.0]  # A1111's: info (unused), tile overlap, upscaler, scale factor


def sampler_name(name: str | None, scheduler: str | None) -> str:
    """Our sampler for A1111's sampler name (any case, or an alias) and 1.9+'s separate schedule type."""
    wanted = (name or "Euler").strip()
    lookup = {key.lower(): key for key in SAMPLERS} | {a: key for key, aliases in SAMPLER_ALIASES.items() for a in aliases}
    found = lookup.get(wanted.lower())
    if found is None:
        raise RecipeError(f"sampler_name: unknown sampler {wanted!r}; choose one of: {', '.join(SAMPLERS)}")
    schedule = (scheduler or "automatic").strip().lower()
    if schedule not in SCHEDULERS:
        raise RecipeError(f"scheduler: {scheduler!r} is not available; choose one of: Automatic, Uniform, Karras")
    if SCHEDULERS[schedule] and not found.endswith(" Karras"):
        karras = found + SCHEDULERS[schedule]
        if karras not in SAMPLERS:
            raise RecipeError(f"scheduler: {found} has no {scheduler} variant; choose Automatic")
        found = karras
    return found


def check_unsupported(request: GenerationRequest) -> None:
    """Refuse A1111 features brushwork does not have, unless they are at their neutral value. The one alwayson
    script brushwork runs is the ControlNet extension's (sdapi_controlnet.py)."""
    scripts = [name for name, value in request.alwayson_scripts.items()
               if name.lower() != CONTROLNET and isinstance(value, dict) and value.get("args")]
    unsupported = {
        "subseed_strength": request.subseed_strength != 0,
        "refiner_checkpoint": request.refiner_checkpoint not in SAME,
        f"alwayson_scripts ({', '.join(scripts)})": bool(scripts),
    }
    if isinstance(request, Txt2ImgRequest):
        unsupported["hr_checkpoint_name"] = request.hr_checkpoint_name not in SAME
    if request.script_name:
        script_name(request)
    used = [name for name, is_used in unsupported.items() if is_used]
    if used:
        raise RecipeError(f"{', '.join(used)}: not supported by brushwork; leave unset (see docs/api.md)")


def script_name(request: GenerationRequest) -> str | None:
    """The A1111 script the request runs (by A1111's lower-cased name), or None; RecipeError if there is none
    such for its route."""
    if not request.script_name:
        return None
    wanted = request.script_name.strip().lower()
    route = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
    if wanted in SCRIPTS[route]:
        return wanted
    elsewhere = [other for other, names in SCRIPTS.items() if wanted in names]
    if elsewhere:
        raise RecipeError(f"script_name: {request.script_name!r} runs in {elsewhere[0]} only, as in A1111; "
                          f"send it to /sdapi/v1/{elsewhere[0]}")
    available = ", ".join(SCRIPTS[route]) or "none"
    raise RecipeError(f"script_name: {request.script_name!r} is not a script of this server; {route} runs: "
                      f"{available} (see GET /sdapi/v1/scripts)")


def sd_upscale_fields(args: list[Any], batch_size: int, tile: tuple[int, int], upscalers: list[str] | None) -> dict[str, Any]:
    """A1111's SD upscale `script_args` — ["", overlap, upscaler, scale], missing ones at A1111's defaults —
    as the Recipe's `sd_upscale`. The upscaler is a name (any case) or an index into GET /sdapi/v1/upscalers
    (None, Lanczos, Nearest, then `upscalers`, the networks; None here: only the built-in ones are known, and
    an unknown name is left for the engine to refuse)."""
    if len(args) > len(SD_UPSCALE_DEFAULTS):
        raise RecipeError(f"script_args: SD upscale takes [info, overlap, upscaler, scale], got {len(args)} values")
    _, overlap, upscaler, scale = [*args, *SD_UPSCALE_DEFAULTS[len(args):]]
    if isinstance(overlap, float) and overlap.is_integer():
        overlap = int(overlap)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise RecipeError(f"script_args[1] (overlap): the tile overlap must be a whole number of pixels, got {overlap!r}")
    if min(tile) >= 8 and overlap >= min(tile):  # a smaller size is refused as width/height itself
        raise RecipeError(f"script_args[1] (overlap): {overlap} must be smaller than the tile size "
                          f"(width x height = {tile[0]}x{tile[1]})")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise RecipeError(f"script_args[3] (scale): the scale factor must be a number, got {scale!r}")
    choices = ["None", *(list(BUILTIN) if upscalers is None else upscalers)]
    if isinstance(upscaler, int) and not isinstance(upscaler, bool):
        if not 0 <= upscaler < len(choices):
            known = "" if upscalers is not None else " (networks only by name here)"
            raise RecipeError(f"script_args[2] (upscaler): index {upscaler} is not one of 0-{len(choices) - 1}"
                              f"{known}: {', '.join(f'{n} {name}' for n, name in enumerate(choices))}")
        upscaler = choices[upscaler]
    elif isinstance(upscaler, str) and upscaler.strip():
        by_lower = {name.lower(): name for name in choices}
        if upscaler.strip().lower() in by_lower:
            upscaler = by_lower[upscaler.strip().lower()]
        elif upscalers is not None:
            raise RecipeError(f"script_args[2] (upscaler): unknown upscaler {upscaler!r}; choose one of: "
                              f"{', '.join(choices)} (or its index)")
    else:
        raise RecipeError(f"script_args[2] (upscaler): give an upscaler name or index, got {upscaler!r}; "
                          f"choose one of: {', '.join(choices)}")
    return {"overlap": overlap, "upscaler": upscaler, "scale": scale, "batch_size": batch_size}


def overrides(request: GenerationRequest, options: WebuiOptions) -> dict[str, Any]:
    """Model, VAE, clip skip, ENSD and the face restorer: the request's override_settings, else the server's
    /options."""
    settings = request.override_settings or {}
    with options.lock:
        fields: dict[str, Any] = {"model": options.checkpoint, "vae": options.vae, "clip_skip": options.clip_skip,
                                  "eta_noise_seed_delta": options.other.get("eta_noise_seed_delta", 0)}
        restorer = options.other.get("face_restoration_model", "CodeFormer")
        codeformer_weight = options.other.get("code_former_weight", 0.5)
    if request.restore_faces:
        fields["restore_faces"] = str(settings.get("face_restoration_model", restorer))
        fields["codeformer_weight"] = settings.get("code_former_weight", codeformer_weight)
    if settings.get("sd_model_checkpoint") not in (None, ""):
        fields["model"] = str(settings["sd_model_checkpoint"])
    if "sd_vae" in settings:
        fields["vae"] = None if settings["sd_vae"] in NO_VAE else str(settings["sd_vae"])
    if "CLIP_stop_at_last_layers" in settings:
        fields["clip_skip"] = settings["CLIP_stop_at_last_layers"]
    if "eta_noise_seed_delta" in settings:
        fields["eta_noise_seed_delta"] = settings["eta_noise_seed_delta"]
    return fields


def txt2img_recipe(request: Txt2ImgRequest, options: WebuiOptions) -> Recipe:
    check_unsupported(request)
    fields = _common_fields(request, options)
    if request.enable_hr:
        hires_sampler = None
        if request.hr_sampler_name not in SAME or request.hr_scheduler not in SAME:
            hires_sampler = sampler_name(request.hr_sampler_name if request.hr_sampler_name not in SAME
                                         else fields["sampler"], None if request.hr_scheduler in SAME else request.hr_scheduler)
        fields["hires"] = {
            "scale": request.hr_scale, "resize_width": request.hr_resize_x, "resize_height": request.hr_resize_y,
            "upscaler": request.hr_upscaler or "Latent", "steps": request.hr_second_pass_steps,
            "denoising_strength": 0.7 if request.denoising_strength is None else request.denoising_strength,
            "prompt": request.hr_prompt or None, "negative_prompt": request.hr_negative_prompt or None,
            "sampler": hires_sampler,
        }
        if request.hr_resize_x or request.hr_resize_y:
            fields["hires"]["scale"] = 2.0  # A1111 ignores hr_scale next to a size; so does the Recipe
    return _build(fields)


def img2img_recipe(request: Img2ImgRequest, options: WebuiOptions, upscalers: list[str] | None = None) -> Recipe:
    """`upscalers`: the image upscalers' names (`list_upscalers`), for SD upscale's upscaler index and name."""
    check_unsupported(request)
    images = request.init_images or []
    if len(images) != 1:
        raise RecipeError(f"init_images: send exactly one picture (got {len(images)})")
    if request.resize_mode not in RESIZE_MODES:
        raise RecipeError(f"resize_mode: {request.resize_mode} is not one of 0, 1, 2, 3")
    if request.inpainting_fill not in INPAINTING_FILL:
        raise RecipeError(f"inpainting_fill: {request.inpainting_fill} is not one of 0, 1, 2, 3")
    if request.inpainting_mask_invert not in (0, 1):
        raise RecipeError(f"inpainting_mask_invert: {request.inpainting_mask_invert} is not 0 or 1")
    blur = request.mask_blur
    if blur is None:
        if request.mask_blur_x != request.mask_blur_y:
            raise RecipeError("mask_blur_x, mask_blur_y: brushwork blurs the mask the same both ways; set mask_blur")
        blur = request.mask_blur_x
    fields = _common_fields(request, options) | {
        "init_image": images[0], "denoising_strength": request.denoising_strength,
        "resize_mode": RESIZE_MODES[request.resize_mode],
    }
    if request.mask:
        fields |= {
            "mask": request.mask, "mask_blur": blur, "inpainting_fill": INPAINTING_FILL[request.inpainting_fill],
            "inpaint_full_res": request.inpaint_full_res, "inpaint_full_res_padding": request.inpaint_full_res_padding,
            "inpainting_mask_invert": bool(request.inpainting_mask_invert),
        }
    if script_name(request) == SD_UPSCALE:
        if request.mask:
            raise RecipeError("mask: SD upscale repaints whole tiles of the upscaled picture; send no mask")
        # A1111's batch_size is the tiles denoised together; each of the n_iter batches makes one picture.
        fields["sd_upscale"] = sd_upscale_fields(request.script_args, request.batch_size,
                                                 (fields["width"], fields["height"]), upscalers)
        fields["batch_size"] = 1
    return _build(fields)


def _common_fields(request: GenerationRequest, options: WebuiOptions) -> dict[str, Any]:
    return {
        "prompt": request.prompt, "negative_prompt": request.negative_prompt, "seed": request.seed,
        "sampler": sampler_name(request.sampler_name or request.sampler_index, request.scheduler),
        # A1111 rounds sizes down to a multiple of 8 (the native API refuses them instead).
        "steps": request.steps, "cfg_scale": request.cfg_scale, "width": request.width // 8 * 8,
        "height": request.height // 8 * 8,
        "batch_size": request.batch_size, "batch_count": request.n_iter, "tiling": bool(request.tiling),
        "control_units": control_units(request), **overrides(request, options),
    }


def _build(fields: dict[str, Any]) -> Recipe:
    try:
        return Recipe(**fields)
    except ValidationError as error:
        parts = []
        for item in error.errors():
            field = ".".join(str(part) for part in item["loc"])
            parts.append(f"{A1111_NAMES.get(field, field) or 'request'}: {item['msg'].removeprefix('Value error, ')}")
        raise RecipeError("; ".join(parts)) from None


def a1111_wording(message: str) -> str:
    """A Recipe-level message (a limit, an unknown upscaler) with the fields named as the A1111 request names them."""
    for field in sorted(A1111_NAMES, key=len, reverse=True):
        message = message.replace(f"{field}:", f"{A1111_NAMES[field]}:").replace(f"{field} =", f"{A1111_NAMES[field]} =")
    return message.replace("batch_size x batch_count", "batch_size x n_iter")


def info_json(job: Job) -> str:
    """A1111's `info` (Processed.js()): a JSON string describing what was made."""
    recipe = job.recipe
    seeds = [record.seed for record in job.images] or [recipe.seed]
    first = job.images[0] if job.images else None
    params = split_infotext(first.infotext)[2] if first else {}
    count = max(1, len(job.images))
    extra = {key: value for key, value in params.items()
             if key.startswith(("Denoising", "Hires", "Mask", "Masked", "Inpaint", "SD upscale", "CodeFormer", "ControlNet"))}
    return json.dumps({
        "prompt": recipe.prompt, "all_prompts": [recipe.prompt] * count,
        "negative_prompt": recipe.negative_prompt, "all_negative_prompts": [recipe.negative_prompt] * count,
        "seed": seeds[0], "all_seeds": seeds, "subseed": seeds[0], "all_subseeds": seeds, "subseed_strength": 0,
        "width": first.width if first else recipe.width, "height": first.height if first else recipe.height,
        "sampler_name": recipe.sampler, "cfg_scale": recipe.cfg_scale, "steps": recipe.steps,
        "batch_size": recipe.sd_upscale.batch_size if recipe.sd_upscale else recipe.batch_size,
        "restore_faces": recipe.restore_faces is not None, "face_restoration_model": recipe.restore_faces,
        "sd_model_name": params.get("Model"), "sd_model_hash": params.get("Model hash"),
        "sd_vae_name": params.get("VAE"), "sd_vae_hash": params.get("VAE hash"),
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": recipe.denoising_strength if recipe.is_img2img
        else (recipe.hires.denoising_strength if recipe.hires else 0),
        "extra_generation_params": extra, "index_of_first_image": 0,
        "infotexts": [record.infotext for record in job.images], "styles": [],
        "job_timestamp": (job.started or job.created).strftime("%Y%m%d%H%M%S"), "clip_skip": recipe.clip_skip,
        "is_using_inpainting_conditioning": False, "version": f"brushwork {__version__}",
        "comments": "\n".join(job.notes),  # what the engine wants the user to know (A1111's Processed.comments)
    })


def png_info_parameters(infotext: str) -> dict[str, Any]:
    """A1111's parsed infotext (parse_generation_parameters), every key and default as a fresh A1111 gives it."""
    return a1111_parameters(infotext)


def checkpoint_name(store: ModelStore, name: str) -> str:
    """A checkpoint name, A1111 title ("x.safetensors [hash]") or hash (short or full sha256) as its entry name;
    ModelLoadError if none."""
    if HEX_HASH.fullmatch(name.strip().lower()):
        wanted = name.strip().lower()
        for entry in store.entries("checkpoint"):
            digest = store.hashes.sha256(entry.path)
            if digest == wanted or digest[:10] == wanted:
                return entry.name
    path = store.resolve("checkpoint", name)
    return next((entry.name for entry in store.entries("checkpoint") if entry.path.resolve() == path), Path(name).name)


def vae_name(store: ModelStore, name: str) -> str:
    path = store.resolve("vae", name)
    return next((entry.name for entry in store.entries("vae") if entry.path.resolve() == path), Path(name).name)
