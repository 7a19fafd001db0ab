"""Stage 3: the starting latents.

Noise is drawn on the CPU in float32 from one generator per image (seed, seed+1, ...), then moved to
the device: the same seed gives the same picture on any device and at any batch size.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


def image_generators(seeds: list[int]) -> list[torch.Generator]:
    """One seeded CPU generator per image; the sampler keeps drawing from them for ancestral noise."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def initial_noise(
    generators: list[torch.Generator], shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Unit Gaussian latents [B, *shape], one image per generator."""
    shape = (1, *shape)
    noise = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.cat(noise).to(device=device, dtype=dtype)


def latent_shape(vae: AutoencoderKL, height: int, width: int) -> tuple[int, int, int]:
    """(channels, height, width) of the latents for a picture: 8x smaller for SD's VAEs."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return vae.config.latent_channels, height // factor, width // factor
