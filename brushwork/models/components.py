"""The loaded parts of one Stable-Diffusion-family checkpoint, as diffusers/transformers modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


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

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    def modules(self) -> list[Any]:
        return [self.unet, self.vae, *self.text_encoders]
