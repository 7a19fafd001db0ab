"""Tiled VAE decode and encode, switched on by picture size.

A VAE's memory grows with the picture: SD's decoder holds several 128-channel activations at full
resolution (about 2 GiB each at 2048x2048 in float32). Above `tile_above_pixels` we therefore hand
the work to diffusers' own `AutoencoderKL.tiled_decode` / `_tiled_encode`, which run the network on
overlapping tiles and blend each overlap linearly. Below it, the plain (exact) path runs.

diffusers' tile geometry, as read from 0.42's `autoencoder_kl.py`:

* `tile_sample_min_size`: tile side in pixels; `tile_latent_min_size`: the same tile in latents.
  diffusers derives both from `config.sample_size` once, in `__init__`, with the downscale factor
  `2 ** (len(block_out_channels) - 1)` (8 for SD, 2 or 4 for our tiny test VAEs); we set both here.
* `tile_overlap_factor`: the share of a tile that overlaps its neighbour. Decode steps
  `int(latent_tile * (1 - f))` latents and keeps `sample_tile - int(sample_tile * f)` pixels per
  tile; those agree only when `latent_tile * f` is a whole number, else the picture comes out the
  wrong size. `_geometry` picks the nearest tile size at or below the one asked for that agrees.

Tiles differ from the whole picture in more than their borders: the VAE's GroupNorm layers take
their statistics per tile, so colours can shift slightly from tile to tile (diffusers says as
much). `bench/vae_tiling.py` measures the difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.accelerate_utils import apply_forward_hook

DEFAULT_TILE_ABOVE_PIXELS = 1024 * 1024
DEFAULT_TILE_SIZE = 512  # pixels; diffusers' default for SD 1.x (its config.sample_size)
DEFAULT_TILE_OVERLAP = 0.25  # diffusers' default


@dataclass(frozen=True)
class TileGeometry:
    """One tile size, in pixels and latents, and its overlap, as diffusers' tiling reads them."""

    sample_size: int
    latent_size: int
    overlap_factor: float


def downscale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent along one side: 8 for SD's VAEs, 2 for a 2-level test VAE."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def should_tile(pixels: int, tile_above_pixels: int | None) -> bool:
    """Whether a picture of `pixels` pixels is decoded or encoded in tiles (None: never)."""
    return tile_above_pixels is not None and pixels > tile_above_pixels


@torch.no_grad()
def decode_latents(
    vae: AutoencoderKL,
    latents: torch.Tensor,
    *,
    tile_above_pixels: int | None = DEFAULT_TILE_ABOVE_PIXELS,
    tile_size: int = DEFAULT_TILE_SIZE,
    tile_overlap: float = DEFAULT_TILE_OVERLAP,
) -> torch.Tensor:
    """Latents [B, C, h, w] (already unscaled: divided by the scaling factor) -> pixels [B, 3, H, W] in [-1, 1].

    Pictures of more than `tile_above_pixels` pixels are decoded in tiles of about `tile_size` pixels
    that overlap by `tile_overlap` of a tile; smaller ones in one piece, exactly as `vae.decode`.
    """
    factor = downscale_factor(vae)
    pixels = latents.shape[-2] * latents.shape[-1] * factor * factor
    if not should_tile(pixels, tile_above_pixels):
        return vae.decode(latents).sample
    _configure(vae, _geometry(tile_size, tile_overlap, factor))
    # tiled_decode is not wrapped in diffusers' offload hook (decode is): wrap it the same way, so a
    # VAE offloaded with accelerate is moved to its device first.
    return apply_forward_hook(type(vae).tiled_decode)(vae, latents).sample


@torch.no_grad()
def encode_pixels(
    vae: AutoencoderKL,
    pixels: torch.Tensor,
    *,
    tile_above_pixels: int | None = DEFAULT_TILE_ABOVE_PIXELS,
    tile_size: int = DEFAULT_TILE_SIZE,
    tile_overlap: float = DEFAULT_TILE_OVERLAP,
) -> DiagonalGaussianDistribution:
    """Pixels [B, 3, H, W] in [-1, 1] -> the latent distribution (`vae.encode(pixels).latent_dist`).

    The caller samples or takes its mode and applies the scaling factor. Tiled above
    `tile_above_pixels`, as `decode_latents`.
    """
    if not should_tile(pixels.shape[-2] * pixels.shape[-1], tile_above_pixels):
        return vae.encode(pixels).latent_dist
    _configure(vae, _geometry(tile_size, tile_overlap, downscale_factor(vae)))
    # `tiled_encode` is deprecated in favour of `_tiled_encode`, which returns the moments.
    moments = apply_forward_hook(type(vae)._tiled_encode)(vae, pixels)
    return DiagonalGaussianDistribution(moments)


def _geometry(tile_size: int, overlap: float, factor: int) -> TileGeometry:
    """The largest tile of at most `tile_size` pixels (and at least 2 latents) whose overlap diffusers
    steps through in whole latents, for both decode and encode."""
    if not 0 <= overlap < 0.5:
        raise ValueError(f"tile overlap must be in [0, 0.5), got {overlap}")
    for latent in range(max(tile_size // factor, 2), 1, -1):
        if _consistent(latent, factor, overlap):
            return TileGeometry(latent * factor, latent, overlap)
    raise ValueError(f"no tile of at most {tile_size} pixels has a whole-latent overlap of {overlap}")


def _consistent(latent: int, factor: int, overlap: float) -> bool:
    """diffusers' own arithmetic (int() and all) gives tiles that add up to the whole picture."""
    sample = latent * factor
    # decode: step in latents, keep in pixels
    decode_step = int(latent * (1 - overlap))
    decode_keep = sample - int(sample * overlap)
    # encode: step in pixels, keep in latents
    encode_step = int(sample * (1 - overlap))
    encode_keep = latent - int(latent * overlap)
    return decode_step > 0 and decode_step * factor == decode_keep and encode_step == encode_keep * factor


def _configure(vae: AutoencoderKL, geometry: TileGeometry) -> None:
    """Set diffusers' tiling attributes; they are read only by the tiled paths (we never set
    `use_tiling`, so `vae.decode` stays untiled for everyone else). Setting them, rather than setting
    and restoring, keeps concurrent callers with the same settings safe."""
    vae.tile_sample_min_size = geometry.sample_size
    vae.tile_latent_min_size = geometry.latent_size
    vae.tile_overlap_factor = geometry.overlap_factor
