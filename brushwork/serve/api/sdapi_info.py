"""A1111's `/sdapi/v1` listings and options: sd-models, sd-vae, samplers, schedulers, upscalers,
latent-upscale-modes, loras, scripts, options (GET/POST) and the refresh-* no-ops.

Options are server-wide, as in A1111: `sd_model_checkpoint` set here is the model of every later
/sdapi request that does not override it. Models load when a job first needs them, not here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body

from brushwork.engine.hires import LATENT_UPSCALERS
from brushwork.engine.samplers import SAMPLERS
from brushwork.errors import BrushworkError
from brushwork.models.single_file import read_metadata
from brushwork.models.store import ModelEntry, ModelStore
from brushwork.output import SAMPLE_FORMATS
from brushwork.recipe import MAX_SEED
from brushwork.serve.api.models import default_checkpoint_name
from brushwork.serve.api.sdapi_adapter import NO_VAE, SAMPLER_ALIASES, SCRIPTS, checkpoint_name, vae_name
from brushwork.serve.api.sdapi_schemas import (
    LatentUpscaleModeItem,
    LoraItem,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
    SDModelItem,
    SDVaeItem,
    UpscalerItem,
)
from brushwork.serve.deps import ImageUpscalers, Options, Store

router = APIRouter(tags=["sdapi (AUTOMATIC1111)"])

KNOWN_OPTIONS = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")
# Stored with the rest, but checked first: brushwork acts on them (see `saved_sample_settings` in sdapi.py).
OUTDIR_OPTIONS = ("outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples")
# A1111 1.10's options at their defaults on a fresh install, in its order (modules/shared_options.py and the
# built-in extensions'); GET /options shows each, POST stores any of them.
A1111_OPTIONS: dict[str, Any] = json.loads(Path(__file__).with_name("a1111_options.json").read_text())


@router.get("/sd-models", response_model=list[SDModelItem])
def sd_models(store: Store) -> list[SDModelItem]:
    """Every checkpoint, titled "name [hash]" as A1111 does (hashes are computed once, then cached)."""
    return [model_item(store, entry) for entry in store.entries("checkpoint")]


@router.get("/sd-vae", response_model=list[SDVaeItem])
def sd_vae(store: Store) -> list[SDVaeItem]:
    return [SDVaeItem(model_name=entry.name, filename=str(entry.path)) for entry in store.entries("vae")]


@router.get("/loras", response_model=list[LoraItem])
def loras(store: Store) -> list[LoraItem]:
    """The Lora and LyCORIS folders (subfolders included); use one with A1111's prompt tag `<lora:name:weight>`.
    As A1111: `name` is the file's name without extension, `alias` its kohya `ss_output_name` (else the name),
    `metadata` the file's safetensors metadata with JSON values decoded."""
    items = []
    for entry in store.entries("lora"):
        name = Path(entry.name).stem
        metadata = {key: _decoded(value) for key, value in read_metadata(entry.path).items()}
        alias = metadata.get("ss_output_name")
        items.append(LoraItem(name=name, alias=alias if isinstance(alias, str) and alias else name,
                              path=str(entry.path), metadata=metadata))
    return items


def _decoded(value: str) -> Any:
    """kohya stores tag frequencies and bucket sizes as JSON text; A1111 hands them out decoded."""
    if value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


@router.get("/samplers", response_model=list[SamplerItem])
def samplers() -> list[SamplerItem]:
    return [SamplerItem(name=name, aliases=SAMPLER_ALIASES.get(name, []),
                        options={"scheduler": "karras"} if name.endswith(" Karras") else {}) for name in SAMPLERS]


@router.get("/schedulers", response_model=list[SchedulerItem])
def schedulers() -> list[SchedulerItem]:
    return [SchedulerItem(name="automatic", label="Automatic"), SchedulerItem(name="uniform", label="Uniform"),
            SchedulerItem(name="karras", label="Karras", default_rho=7.0)]


@router.get("/upscalers", response_model=list[UpscalerItem])
def upscalers(upscalers: ImageUpscalers, store: Store) -> list[UpscalerItem]:
    items = [UpscalerItem(name="None")]
    networks = {Path(entry.name).with_suffix("").as_posix(): entry for entry in store.entries("upscaler")}
    for name in upscalers.names():
        entry = networks.get(name)
        items.append(UpscalerItem(name=name, model_name=name if entry else None,
                                  model_path=str(entry.path) if entry else None, scale=None if entry else 4))
    return items


@router.get("/latent-upscale-modes", response_model=list[LatentUpscaleModeItem])
def latent_upscale_modes() -> list[LatentUpscaleModeItem]:
    return [LatentUpscaleModeItem(name=name) for name in LATENT_UPSCALERS]


@router.get("/scripts", response_model=ScriptsList)
def scripts() -> ScriptsList:
    """The A1111 scripts `script_name` may name (A1111's lower-cased titles): SD upscale, in img2img. No extensions."""
    return ScriptsList(txt2img=list(SCRIPTS["txt2img"]), img2img=list(SCRIPTS["img2img"]))


@router.get("/options")
def get_options(store: Store, options: Options) -> dict[str, Any]:
    """Every option A1111 1.10 has, at its default unless set; the ones brushwork honours reflect its state."""
    with options.lock:
        checkpoint, vae, clip_skip, other = options.checkpoint, options.vae, options.clip_skip, dict(options.other)
    checkpoint = checkpoint or default_checkpoint_name(store)
    entry = next((e for e in store.entries("checkpoint") if e.name == checkpoint), None)
    return A1111_OPTIONS | other | {
        "sd_model_checkpoint": model_item(store, entry).title if entry else checkpoint,
        "sd_checkpoint_hash": store.hashes.sha256(entry.path) if entry else None,
        "sd_vae": vae or "Automatic",
        "CLIP_stop_at_last_layers": clip_skip,
    }


@router.post("/options")
def set_options(body: Annotated[dict[str, Any], Body()], store: Store, options: Options) -> None:
    """Set options; all are checked before any is applied. Unknown options are kept but change nothing."""
    update = check_options(store, body)
    with options.lock:
        for name, value in update.items():
            if name in ("checkpoint", "vae", "clip_skip"):
                setattr(options, name, value)
        options.other.update({key: value for key, value in body.items() if key not in KNOWN_OPTIONS})


@router.post("/refresh-checkpoints")
def refresh_checkpoints() -> None:
    """A no-op: the models folder is read afresh on every listing and request."""


@router.post("/refresh-vae")
def refresh_vae() -> None:
    """A no-op, as refresh-checkpoints."""


@router.post("/refresh-loras")
def refresh_loras() -> None:
    """A no-op, as refresh-checkpoints."""


@router.post("/refresh-embeddings")
def refresh_embeddings() -> None:
    """A no-op: every job reads the embeddings folder afresh (a file is parsed again only when it changed)."""


def check_options(store: ModelStore, body: dict[str, Any]) -> dict[str, Any]:
    """The WebuiOptions fields `body` sets, every value checked (BrushworkError/ModelLoadError names the option)."""
    update: dict[str, Any] = {}
    if "sd_model_checkpoint" in body:
        value = body["sd_model_checkpoint"]
        if not isinstance(value, str) or not value:
            raise BrushworkError("sd_model_checkpoint: give a checkpoint title or name from /sdapi/v1/sd-models")
        update["checkpoint"] = checkpoint_name(store, value)
    if "sd_vae" in body:
        value = body["sd_vae"]
        if value not in NO_VAE and not isinstance(value, str):
            raise BrushworkError("sd_vae: give a VAE name from /sdapi/v1/sd-vae, or Automatic")
        update["vae"] = None if value in NO_VAE else vae_name(store, value)
    if "CLIP_stop_at_last_layers" in body:
        value = body["CLIP_stop_at_last_layers"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
            raise BrushworkError(f"CLIP_stop_at_last_layers: must be a whole number from 1 to 12, got {value!r}")
        update["clip_skip"] = value
    if "samples_format" in body and str(body["samples_format"]).lower() not in SAMPLE_FORMATS:
        raise BrushworkError(f"samples_format: {body['samples_format']!r} is not one of {', '.join(SAMPLE_FORMATS)}")
    for name in ("jpeg_quality", "eta_noise_seed_delta"):
        value = body.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= (100 if name == "jpeg_quality" else MAX_SEED):
            top = "100" if name == "jpeg_quality" else f"{MAX_SEED}"
            raise BrushworkError(f"{name}: must be a whole number from 0 to {top}, got {value!r}")
    for name in OUTDIR_OPTIONS:
        if name in body:
            value = body[name]
            if not isinstance(value, str) or Path(value).is_absolute() or ".." in Path(value).parts:
                raise BrushworkError(f"{name}: give a folder inside the server's data folder (a relative path "
                                     f"without '..'), got {value!r}")
    return update


def model_item(store: ModelStore, entry: ModelEntry) -> SDModelItem:
    sha256 = store.hashes.sha256(entry.path)
    config = entry.path.with_suffix(".yaml")
    return SDModelItem(
        title=f"{entry.name} [{sha256[:10]}]", model_name=Path(entry.name).with_suffix("").as_posix().replace("/", "_"),
        hash=sha256[:10], sha256=sha256, filename=str(entry.path), config=str(config) if config.is_file() else None,
    )
