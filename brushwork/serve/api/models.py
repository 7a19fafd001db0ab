"""`/api/v1/models`, `/samplers`, `/upscalers`: what a Recipe may name on this server."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from brushwork.engine.hires import LATENT_UPSCALERS
from brushwork.engine.samplers import SAMPLERS
from brushwork.models.store import ModelStore
from brushwork.serve.deps import ImageUpscalers, Store

router = APIRouter(tags=["models"])


class ModelList(BaseModel):
    """Names as a Recipe's `model` / `vae` take them (paths below the models folder's subfolders)."""

    checkpoints: list[str]
    vaes: list[str]
    loras: list[str]
    default_checkpoint: str | None  # what a Recipe without `model` uses


class UpscalerList(BaseModel):
    latent: list[str]  # hires fix only: upscale the latents
    image: list[str]  # pictures: hires fix and /sdapi/v1/extra-single-image


@router.get("/models", response_model=ModelList)
def list_models(store: Store) -> ModelList:
    checkpoints = [entry.name for entry in store.entries("checkpoint")]
    return ModelList(
        checkpoints=checkpoints,
        vaes=[entry.name for entry in store.entries("vae")],
        loras=[entry.name for entry in store.entries("lora")],
        default_checkpoint=default_checkpoint_name(store),
    )


@router.get("/samplers", response_model=list[str])
def list_samplers() -> list[str]:
    return list(SAMPLERS)


@router.get("/upscalers", response_model=UpscalerList)
def list_upscalers(upscalers: ImageUpscalers) -> UpscalerList:
    return UpscalerList(latent=list(LATENT_UPSCALERS), image=upscalers.names())


def default_checkpoint_name(store: ModelStore) -> str | None:
    """The first checkpoint in the folder, as A1111 picks, else the embedded model; None if there is neither."""
    entries = store.entries("checkpoint")
    return entries[0].name if entries else None
