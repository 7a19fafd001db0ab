"""Seamless textures (A1111's `tiling`): circular padding in the U-Net and VAE, restored exactly."""

from __future__ import annotations

import numpy as np
import torch

from brushwork.engine.engine import Engine
from brushwork.engine.seamless import circular_padding
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe
from tiny_models import tiny_components


def padding_modes(module: torch.nn.Module) -> list[str]:
    return [layer.padding_mode for layer in module.modules() if isinstance(layer, torch.nn.Conv2d)]


def test_circular_networks_commute_with_a_wrap_around_shift():
    components = tiny_components("sd1")
    unet, vae = components.unet, components.vae
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    shift = 4  # a multiple of the U-Net's downsampling, so the shifted grid is the same grid

    def denoise(x):
        return unet(x, torch.tensor([500]), encoder_hidden_states=context).sample

    with torch.no_grad():
        with circular_padding(unet, vae):
            shifted_first = denoise(torch.roll(latents, shift, dims=-1))
            shifted_after = torch.roll(denoise(latents), shift, dims=-1)
            decoded = vae.decode(latents).sample
            scale = decoded.shape[-1] // latents.shape[-1]  # pixels per latent of this VAE
            decoded_shifted = vae.decode(torch.roll(latents, shift, dims=-1)).sample
            shifted_decoded = torch.roll(decoded, shift * scale, dims=-1)
        plain = torch.roll(denoise(latents), shift, dims=-1)
        plain_shifted = denoise(torch.roll(latents, shift, dims=-1))
    assert torch.allclose(shifted_first, shifted_after, atol=1e-4)
    assert torch.allclose(decoded_shifted, shifted_decoded, atol=1e-4)
    assert not torch.allclose(plain, plain_shifted, atol=1e-2)  # zero padding knows where the edges are


def test_a_tiled_picture_wraps_without_a_seam_and_the_model_is_left_as_it_was():
    engine = Engine(ModelStore())
    model = engine.store.load(None)
    before = padding_modes(model.components.unet) + padding_modes(model.components.vae)
    recipe = Recipe(prompt="a red circle on a blue background", steps=8, seed=3, width=64, height=64)

    def seam_ratio(picture) -> float:
        """How far apart the opposite edges are, relative to neighbouring columns/rows inside."""
        pixels = np.asarray(picture, dtype=np.float32)
        across = np.abs(pixels[:, 0] - pixels[:, -1]).mean() + np.abs(pixels[0] - pixels[-1]).mean()
        inside = np.abs(np.diff(pixels, axis=1)).mean() + np.abs(np.diff(pixels, axis=0)).mean()
        return float(across / inside)

    tiled = engine.run(recipe.model_copy(update={"tiling": True})).images[0]
    plain = engine.run(recipe).images[0]
    # Measured: 0.87 tiled (the edges as alike as neighbouring columns), 1.40 plain.
    assert seam_ratio(tiled.image) < 1.0 < seam_ratio(plain.image)
    assert "Tiling: True" in tiled.infotext and "Tiling" not in plain.infotext
    assert padding_modes(model.components.unet) + padding_modes(model.components.vae) == before


def test_tiling_travels_through_the_infotext():
    from brushwork.infotext import parse_infotext

    recipe, _ = parse_infotext("a wall\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Tiling: True")
    assert recipe.tiling is True
    recipe, _ = parse_infotext("a wall\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64")
    assert recipe.tiling is False


def test_the_cli_flag(tmp_path):
    from PIL import Image

    from brushwork.cli import main

    assert main(["generate", "a wall", "--tiling", "--steps", "2", "-W", "64", "-H", "64", "--seed", "1",
                 "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert "Tiling: True" in Image.open(next(tmp_path.glob("*.png"))).info["parameters"]
