"""Tiled VAE decode/encode (`brushwork.engine.tiling`): the automatic switch, exactness below it, tile
geometry for 2x and 4x test VAEs (SD's is 8x), and closeness and seamlessness above it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from brushwork.engine.tiling import _geometry, decode_latents, downscale_factor, encode_pixels

# Tiled and untiled decodes of a random-weight VAE differ well beyond rounding: each tile takes its
# own GroupNorm statistics and its own mid-block attention (diffusers' tiling, and everyone's naive
# tiling, works so). Measured mean |difference| on [-1, 1]: 0.10 for both the 2x VAE (64 px tiles)
# and the 4x VAE (96 px tiles); the tolerance leaves some room above that.
MEAN_TOLERANCE = 0.15


def tiny_vae(levels: int) -> AutoencoderKL:
    """A seeded random VAE with `levels` levels: latents 2x (2 levels) or 4x (3 levels) smaller."""
    torch.manual_seed(levels)
    return AutoencoderKL(
        sample_size=64, block_out_channels=(32, 64, 64)[:levels], down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, layers_per_block=1, latent_channels=4,
    ).eval()


def smooth_picture(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """[1, 3, H, W] in [-1, 1]: bicubic-enlarged noise, so latents have structure as real ones do."""
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, height // 8, width // 8, generator=generator)
    return F.interpolate(small, size=(height, width), mode="bicubic").clamp(0, 1) * 2 - 1


def test_below_the_threshold_it_is_the_plain_decode_and_encode():
    vae = tiny_vae(2)
    pixels = smooth_picture(64, 96)
    latents = torch.randn(1, 4, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(decode_latents(vae, latents, tile_above_pixels=64 * 96), vae.decode(latents).sample)
        assert torch.equal(encode_pixels(vae, pixels, tile_above_pixels=64 * 96).mean, vae.encode(pixels).latent_dist.mean)


def test_tiles_switch_on_above_the_threshold(monkeypatch):
    calls = []
    for method in ("tiled_decode", "_tiled_encode"):
        original = getattr(AutoencoderKL, method)

        def spy(self, *args, _original=original, _name=method, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(AutoencoderKL, method, spy)
    vae = tiny_vae(2)
    latents, pixels = torch.randn(1, 4, 16, 24), smooth_picture(32, 48)  # both 32x48 = 1536 pixels
    decode_latents(vae, latents, tile_above_pixels=1536, tile_size=16)
    encode_pixels(vae, pixels, tile_above_pixels=1536, tile_size=16)
    assert calls == []
    decode_latents(vae, latents, tile_above_pixels=1535, tile_size=16)
    encode_pixels(vae, pixels, tile_above_pixels=1535, tile_size=16)
    assert calls == ["tiled_decode", "_tiled_encode"]
    decode_latents(vae, latents, tile_above_pixels=None, tile_size=16)  # None: never
    assert len(calls) == 2


@pytest.mark.parametrize(("levels", "tile_size", "overlap"), [(2, 32, 0.25), (2, 48, 0.3), (3, 40, 0.25), (3, 32, 0.0)])
def test_tile_geometry_adds_up_to_the_whole_picture(levels, tile_size, overlap):
    vae = tiny_vae(levels)
    factor = downscale_factor(vae)
    geometry = _geometry(tile_size, overlap, factor)
    assert geometry.sample_size <= tile_size and geometry.sample_size == geometry.latent_size * factor
    latents = torch.randn(1, 4, 37, 29)  # odd sizes: the last tiles are partial
    assert decode_latents(vae, latents, tile_above_pixels=0, tile_size=tile_size, tile_overlap=overlap).shape == (
        1, 3, 37 * factor, 29 * factor)
    pixels = smooth_picture(37 * factor, 29 * factor)
    encoded = encode_pixels(vae, pixels, tile_above_pixels=0, tile_size=tile_size, tile_overlap=overlap)
    assert encoded.mean.shape == (1, 4, 37, 29)


def _seam_jump(untiled: torch.Tensor, tiled: torch.Tensor, stride: int) -> float:
    """How far tiled decoding steps across tile borders, relative to elsewhere.

    The tiled-minus-untiled difference is stepped from each column to the next and averaged down
    the column (a seam is a step shared by the whole border; pixel noise averages out); the largest
    such step at a tile border is divided by the median step anywhere. The same for rows; the worse
    of the two is returned. About 1 means no seam.
    """
    difference = tiled - untiled
    ratios = []
    for dim, along in ((3, 2), (2, 3)):
        steps = difference.diff(dim=dim).mean(dim=along).abs().mean(dim=(0, 1))
        borders = [border - 1 for border in range(stride, difference.shape[dim], stride)]
        ratios.append((steps[borders].max() / steps.median()).item())
    return max(ratios)


def _decode_both(levels: int, height: int, width: int, tile_size: int, overlap: float):
    """(untiled, tiled, pixels kept per tile) for a smooth picture's latents."""
    vae = tiny_vae(levels)
    factor = downscale_factor(vae)
    with torch.no_grad():
        latents = vae.encode(smooth_picture(height, width)).latent_dist.mode()
        untiled = vae.decode(latents).sample
    tiled = decode_latents(vae, latents, tile_above_pixels=0, tile_size=tile_size, tile_overlap=overlap)
    stride = int(_geometry(tile_size, overlap, factor).latent_size * (1 - overlap)) * factor
    return untiled, tiled, stride


@pytest.mark.parametrize(("levels", "height", "width", "tile_size"), [(2, 128, 192, 64), (3, 192, 256, 96)])
def test_tiled_decode_is_close_to_untiled_and_seamless(levels, height, width, tile_size):
    untiled, tiled, stride = _decode_both(levels, height, width, tile_size, 0.25)
    assert tiled.shape == untiled.shape
    assert (tiled - untiled).abs().mean() < MEAN_TOLERANCE
    # diffusers blends each overlap linearly: no step at the borders (measured 2.5 and 1.2) ...
    assert _seam_jump(untiled, tiled, stride) < 3.5
    # ... whereas tiles butted together (no overlap) show theirs (measured 13.5 and 8.0): the check can fail.
    assert _seam_jump(*_decode_both(levels, height, width, tile_size, 0.0)) > 5
