"""Stage 6: latents -> pictures, and the cheap live preview."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from brushwork.engine.tiling import decode_latents
from brushwork.models.families import model_family



@torch.no_grad()
def decode(vae: AutoencoderKL, latents: torch.Tensor) -> list[Image.Image]:
    """Decode one image at a time, so peak memory does not grow with the batch."""
    images = []
    for latent in latents.split(1):
        latent = latent.to(vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):
            latent = latent + vae.config.shift_factor
        pixels = decode_latents(vae, latent)  # tiled above 1024×1024 pixels, so big pictures fit
        images.append(to_pil(pixels)[0])
    return images


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] float pixels [B, 3, H, W] -> 8-bit RGB pictures (rounded as A1111 and diffusers do)."""
    array = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round()
    array = array.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def preview(latents: torch.Tensor, family: str) -> Image.Image:
    """A small RGB approximation of the first image's latents, for live progress: the family's 4×3 fit of
    latent channels to RGB (A1111's "Approx cheap") instead of a VAE decode, good enough to watch it form."""
    factors = torch.tensor(model_family(family).latent_rgb)
    latent = latents[0].float().cpu()
    if latent.shape[0] != factors.shape[0]:
        latent = latent[: factors.shape[0]]
    rgb = torch.einsum("chw,cr->hwr", latent, factors)
    array = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(array)
