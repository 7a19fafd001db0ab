"""The rest of A1111's `/sdapi/v1`: what clients ask of the server and its folders beyond generation.

cmd-flags, memory, embeddings, hypernetworks, realesrgan-models, sd-modules, script-info, interrogate,
unload-/reload-checkpoint and server-stop/-restart/-kill. Shapes follow A1111's OpenAPI; where brushwork
has nothing of a kind (hypernetworks, UNet modules, a captioning model) the listing is empty or the
request gets a 4xx saying so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psutil
import torch
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from brushwork.engine.embeddings import load_embedding
from brushwork.errors import BrushworkError
from brushwork.serve.api.sdapi_schemas import (
    EmbeddingItem,
    EmbeddingsResponse,
    FaceRestorerItem,
    HypernetworkItem,
    InterrogateRequest,
    MemoryResponse,
    PromptStyleItem,
    RealesrganItem,
    ScriptArg,
    ScriptInfo,
    SDModuleItem,
)
from brushwork.serve.deps import Options, ServerSettings, Store
from brushwork.styles import STYLES_NAME, load_styles

router = APIRouter(tags=["sdapi (AUTOMATIC1111)"])

# A1111 1.10's flags (modules/cmd_args.py and the built-in Lora extension's) at their defaults; paths relative.
CMD_FLAGS = json.loads((Path(__file__).with_name("a1111_cmd_flags.json")).read_text())
SD_UPSCALE = "sd upscale"  # A1111 names scripts by their lower-cased title
SCALE_PREFIX = re.compile(r"^(\d)x", re.IGNORECASE)


@router.get("/cmd-flags")
def cmd_flags(settings: ServerSettings) -> dict[str, Any]:
    """A1111's command-line flags at their defaults, with the ones brushwork serve has set to its own values."""
    models = settings.models_dir
    return CMD_FLAGS | {
        "listen": settings.host != "127.0.0.1", "port": settings.port, "api": True, "nowebui": False,
        "styles_file": str(settings.data_dir / STYLES_NAME),
        "api_auth": ",".join(settings.basic_auth) or None, "api_server_stop": settings.allow_server_stop,
        "disable_safe_unpickle": settings.allow_pickle, "data_dir": str(settings.data_dir),
        "ckpt_dir": str(models / "Stable-diffusion") if models else None,
        "vae_dir": str(models / "VAE") if models else None,
        "lora_dir": str(models / "Lora") if models else CMD_FLAGS.get("lora_dir"),
        "embeddings_dir": str(models / "embeddings") if models else CMD_FLAGS.get("embeddings_dir"),
        "esrgan_models_path": str(models / "ESRGAN") if models else CMD_FLAGS.get("esrgan_models_path"),
    }


@router.get("/memory", response_model=MemoryResponse)
def memory() -> MemoryResponse:
    ram = psutil.virtual_memory()
    ram_info = {"free": ram.available, "used": ram.total - ram.available, "total": ram.total}
    if not torch.cuda.is_available():
        return MemoryResponse(ram=ram_info, cuda={"error": "no CUDA device"})
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()
    cuda = {
        "system": {"free": free, "used": total - free, "total": total},
        "active": {"current": stats["active_bytes.all.current"], "peak": stats["active_bytes.all.peak"]},
        "allocated": {"current": stats["allocated_bytes.all.current"], "peak": stats["allocated_bytes.all.peak"]},
        "reserved": {"current": stats["reserved_bytes.all.current"], "peak": stats["reserved_bytes.all.peak"]},
        "inactive": {"current": stats["inactive_split_bytes.all.current"], "peak": stats["inactive_split_bytes.all.peak"]},
        "events": {"retries": stats["num_alloc_retries"], "oom": stats["num_ooms"]},
    }
    return MemoryResponse(ram=ram_info, cuda=cuda)


@router.get("/embeddings", response_model=EmbeddingsResponse)
def embeddings(store: Store) -> EmbeddingsResponse:
    """The embeddings folder's textual inversions: `loaded` are those that fit the checkpoint in memory (all
    readable ones while none is loaded), `skipped` those made for another family, or that cannot be read
    (a pickle without --allow-pickle, a damaged file), with no shape."""
    model = store.last_loaded()
    widths = [encoder.config.hidden_size for encoder in model.components.text_encoders] if model else None
    loaded, skipped = {}, {}
    for entry in store.entries("embedding"):
        try:
            embedding = load_embedding(entry.path, allow_pickle=store.allow_pickle)
        except BrushworkError:
            skipped[entry.path.stem] = EmbeddingItem(shape=0, vectors=0)
            continue
        item = EmbeddingItem(shape=embedding.vectors[-1].shape[-1], vectors=embedding.count)
        (loaded if widths is None or embedding.fits(widths) else skipped)[embedding.name] = item
    return EmbeddingsResponse(loaded=loaded, skipped=skipped)


@router.get("/hypernetworks", response_model=list[HypernetworkItem])
def hypernetworks() -> list[HypernetworkItem]:
    """Empty: brushwork does not load hypernetworks (A1111 itself deprecated them)."""
    return []


@router.get("/face-restorers", response_model=list[FaceRestorerItem])
def face_restorers(settings: ServerSettings) -> list[FaceRestorerItem]:
    """A1111's two face restorers and the folders their weights go in (face restoration itself: not yet)."""
    models = settings.models_dir
    return [FaceRestorerItem(name=name, cmd_dir=str(models / folder) if models else None)
            for name, folder in (("CodeFormer", "Codeformer"), ("GFPGAN", "GFPGAN"))]


@router.get("/realesrgan-models", response_model=list[RealesrganItem])
def realesrgan_models(store: Store) -> list[RealesrganItem]:
    """The super-resolution networks of the ESRGAN folder (spandrel loads Real-ESRGAN files from there too)."""
    items = []
    for entry in store.entries("upscaler"):
        scale = SCALE_PREFIX.match(Path(entry.name).name)
        items.append(RealesrganItem(name=Path(entry.name).with_suffix("").as_posix(), path=str(entry.path),
                                    scale=int(scale.group(1)) if scale else None))
    return items


@router.get("/prompt-styles", response_model=list[PromptStyleItem])
def prompt_styles(settings: ServerSettings) -> list[PromptStyleItem]:
    """The data folder's styles.csv (A1111's columns: name, prompt, negative_prompt); use them by name in `styles`."""
    styles = load_styles(settings.data_dir / STYLES_NAME)
    return [PromptStyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt) for s in styles.values()]


@router.get("/sd-modules", response_model=list[SDModuleItem])
def sd_modules() -> list[SDModuleItem]:
    """Empty: no separate UNet modules (A1111's TensorRT-style SD Unet option)."""
    return []


@router.get("/script-info", response_model=list[ScriptInfo])
def script_info(store: Store) -> list[ScriptInfo]:
    """The one A1111 script brushwork runs: SD upscale (img2img), with A1111's argument order and defaults
    (the upscaler: A1111's first, "None"; a name or an index into `choices`, as GET /sdapi/v1/upscalers)."""
    from brushwork.upscale import list_upscalers

    args = [
        ScriptArg(label="info", value=""),
        ScriptArg(label="Tile overlap", value=64, minimum=0, maximum=256, step=16),
        ScriptArg(label="Upscaler", value="None", choices=["None", *list_upscalers(store)]),
        ScriptArg(label="Scale Factor", value=2.0, minimum=1.0, maximum=4.0, step=0.05),
    ]
    return [ScriptInfo(name=SD_UPSCALE, is_alwayson=False, is_img2img=True, args=args)]


@router.post("/interrogate")
def interrogate(body: InterrogateRequest) -> None:
    raise BrushworkError(f"model: {body.model!r} interrogation needs a captioning model (CLIP interrogator, "
                         "DeepBooru), and brushwork has none; caption pictures yourself")


@router.post("/unload-checkpoint")
def unload_checkpoint(store: Store) -> None:
    """Free every loaded checkpoint; the next job loads its model again."""
    store.unload_all()


@router.post("/reload-checkpoint")
async def reload_checkpoint(store: Store, options: Options) -> None:
    """Load the current checkpoint (the options' sd_model_checkpoint, else the default) now, not at the next job."""
    with options.lock:
        checkpoint, vae = options.checkpoint, options.vae
    await run_in_threadpool(store.load, checkpoint, vae)


@router.post("/server-stop")
def server_stop(request: Request, settings: ServerSettings) -> dict:
    """Stop gracefully: waiting requests give up, queued jobs stay in the database for the next start."""
    _control(request, settings, "stop")
    return {}


@router.post("/server-restart")
def server_restart(request: Request, settings: ServerSettings) -> dict:
    """Stop gracefully, then start again with the same command line."""
    _control(request, settings, "restart")
    return {}


@router.post("/server-kill")
def server_kill(request: Request, settings: ServerSettings) -> dict:
    """End the process now, as A1111 does; jobs were written to the database before they were acknowledged."""
    _control(request, settings, "kill")
    return {}


def _control(request: Request, settings, action: str) -> None:
    if not settings.allow_server_stop:
        raise HTTPException(403, f"server-{action} is off: start brushwork serve with --api-server-stop to allow it")
    control = getattr(request.app.state, "server_control", None)
    if control is None:
        raise HTTPException(409, f"server-{action}: this app was not started by brushwork serve")
    control(action)
