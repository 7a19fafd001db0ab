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


@torch.no_grad()
def inpaint_conditioning(
    vae: AutoencoderKL, mask: torch.Tensor, masked_image: torch.Tensor, latent_size: tuple[int, int]
) -> torch.Tensor:
    """The 5 extra input channels of a 9-channel inpainting U-Net: mask, then masked-image latents.

    `mask` [B, 1, H, W] in [0, 1] (1 = repaint); `masked_image` [B, 3, H, W] in [-1, 1] with the
    repainted area zeroed. The posterior's mean stands in for a sample: deterministic, and the
    difference is far below what the U-Net can see.
    """
    latents = vae.encode(masked_image.to(vae.dtype)).latent_dist.mode() * vae.config.scaling_factor
    small_mask = torch.nn.functional.interpolate(mask.to(latents.dtype), size=latent_size)
    return torch.cat([small_mask, latents], dim=1)


def txt2img_inpaint_conditioning(vae: AutoencoderKL, batch: int, height: int, width: int) -> torch.Tensor:
    """txt2img with an inpainting model, as A1111 does it: the whole picture is masked, so the
    masked image is all grey (zero) and the mask all ones."""
    parameter = next(vae.parameters())
    mask = torch.ones(batch, 1, height, width, device=parameter.device, dtype=parameter.dtype)
    masked_image = torch.zeros(batch, 3, height, width, device=parameter.device, dtype=parameter.dtype)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return inpaint_conditioning(vae, mask, masked_image, (height // factor, width // factor))


def pil_to_pixels(images: list, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """8-bit RGB pictures -> [B, 3, H, W] in [-1, 1], as the VAE expects."""
    import numpy as np

    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).to(device=device, dtype=dtype)


@torch.no_grad()
def encode(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """Pictures -> scaled latents (the posterior's mean: deterministic, and its spread is negligible)."""
    from brushwork.engine.tiling import encode_pixels  # tiled above 1024×1024 pixels

    latents = encode_pixels(vae, pixels.to(vae.dtype)).mode()
    if getattr(vae.config, "shift_factor", None):
        latents = latents - vae.config.shift_factor
    return latents * vae.config.scaling_factor


def mask_to_latent(mask, latent_size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A blurred 8-bit mask -> a binary [1, 1, h, w] latent mask (1 = repaint), as diffusers and A1111 round it."""
    import numpy as np

    pixels = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    binary = (pixels >= 0.5).to(dtype)
    return torch.nn.functional.interpolate(binary, size=latent_size).to(device)
