"""Stage 5, hires fix: upscale the first pass (in latent space, or as a picture through an image
upscaler) and run a second img2img pass at the larger size with its own steps and strength."""

from __future__ import annotations

from typing import Callable

import torch
from PIL import Image

from brushwork.engine import latents as latent_stage
from brushwork.engine import vae as vae_stage
from brushwork.engine.conditioning import PromptEncoder
from brushwork.engine.denoise import StepInfo
from brushwork.engine.extensions import Extension
from brushwork.engine.passes import PassPlan, run_pass, steps_run
from brushwork.errors import RecipeError
from brushwork.models.components import Components
from brushwork.recipe import Hires, Recipe

# A1111's latent upscalers: (torch interpolation mode, antialias).
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}

ImageUpscaler = Callable[[Image.Image, str, tuple[int, int]], Image.Image]


def hires_size(recipe: Recipe) -> tuple[int, int]:
    """The second pass's size: resize_width/height if given (the other side keeps the aspect), else
    the base size times the scale, down to a multiple of 8."""
    hires: Hires = recipe.hires
    if hires.resize_width or hires.resize_height:
        width = hires.resize_width or round(hires.resize_height * recipe.width / recipe.height)
        height = hires.resize_height or round(hires.resize_width * recipe.height / recipe.width)
    else:
        width, height = recipe.width * hires.scale, recipe.height * hires.scale
    return max(8, int(width) // 8 * 8), max(8, int(height) // 8 * 8)


def upscale_latents(latents: torch.Tensor, upscaler: str, size: tuple[int, int], factor: int) -> torch.Tensor:
    mode, antialias = LATENT_UPSCALERS[upscaler]
    target = (size[1] // factor, size[0] // factor)
    return torch.nn.functional.interpolate(latents.float(), size=target, mode=mode, antialias=antialias).to(latents.dtype)


def hires_pass(
    components: Components,
    encoder: PromptEncoder,
    recipe: Recipe,
    latents: torch.Tensor,
    generators: list[torch.Generator],
    seeds: list[int],
    upscale_image: ImageUpscaler,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    extensions: Callable[[int, int], list[Extension]] = lambda width, height: [],
) -> torch.Tensor:
    """The second pass; `extensions(width, height)` gives the denoiser's extensions at the hires size."""
    hires: Hires = recipe.hires
    width, height = hires_size(recipe)
    vae = components.vae
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if hires.upscaler in LATENT_UPSCALERS:
        upscaled = upscale_latents(latents, hires.upscaler, (width, height), factor)
    else:
        pictures = [upscale_image(picture, hires.upscaler, (width, height)) for picture in vae_stage.decode(vae, latents)]
        for picture in pictures:
            if picture.size != (width, height):
                raise RecipeError(f"upscaler {hires.upscaler!r} returned {picture.size}, not {(width, height)}")
        pixels = latent_stage.pil_to_pixels(pictures, latents.device, latents.dtype)
        upscaled = latent_stage.encode(vae, pixels)

    steps = hires.steps or recipe.steps
    prompt = recipe.prompt if hires.prompt is None else hires.prompt
    negative = recipe.negative_prompt if hires.negative_prompt is None else hires.negative_prompt
    positive, negative_conditioning = encoder.encode_pair(prompt, negative, max(1, steps_run(steps, hires.denoising_strength)))
    images = len(seeds)
    plan = PassPlan(
        hires.sampler or recipe.sampler, steps, width, height, [recipe.cfg_scale] * images, [positive] * images,
        [negative_conditioning] * images, strength=hires.denoising_strength, init_latents=upscaled,
        extensions=extensions(width, height),
    )
    return run_pass(components, plan, generators, seeds, on_step=on_step, should_stop=should_stop,
                    noise_seed_delta=recipe.eta_noise_seed_delta)
