"""The loaded parts of one Stable-Diffusion-family checkpoint, as diffusers/transformers modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from brushwork.models.families import ModelFamily, model_family
from brushwork.models.patches.patcher import ModelPatcher


@dataclass
class Components:
    """Everything the engine needs from a checkpoint.

    `text_encoders`/`tokenizers` hold one entry for SD 1.x/2.x and two for SDXL (CLIP ViT-L, then
    OpenCLIP bigG with its projection), in the order SDXL concatenates their hidden states.
    """

    family: str  # "sd1" | "sd2" | "sdxl"
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[CLIPTextModel | CLIPTextModelWithProjection]
    tokenizers: list[CLIPTokenizer]
    scheduler_config: dict[str, Any]  # the base noise schedule, prediction_type included
    native_size: int  # the side length, in pixels, the model was trained at
    inpaint: bool = False  # a 9-channel U-Net (latents + mask + masked-image latents)
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. left-over keys, for logging
    # Applies a job's weight patches (LoRAs) and restores them exactly. One per set of modules: a copy made
    # with `dataclasses.replace` (another VAE) shares it, as it shares the U-Net and text encoders.
    patcher: ModelPatcher | None = None

    def __post_init__(self) -> None:
        if self.patcher is None:
            names = ["text_encoder", "text_encoder_2"][: len(self.text_encoders)]
            self.patcher = ModelPatcher({"unet": self.unet, **dict(zip(names, self.text_encoders))})

    @property
    def model_family(self) -> ModelFamily:
        """What this family does differently (models/families)."""
        return model_family(self.family)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    def modules(self) -> list[Any]:
        return [self.unet, self.vae, *self.text_encoders]
