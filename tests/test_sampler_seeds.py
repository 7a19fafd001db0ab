"""Per-image randomness: picture k of a batch equals its seed run alone, for every sampler.

Every random draw of a picture (initial noise, ancestral noise, DPM++ SDE's Brownian tree) comes
from that picture's own seed, so neither the batch size nor the server's grouping of unrelated jobs
changes a picture. Compared on the final latents (before the VAE) and on the decoded pixels.

Tolerance: latents within 1e-5 of their largest magnitude (`_same`; that is ~80 float32 ulps of the
largest value: these random tiny models make latents up to ~60), pixels within one 8-bit level.
Not exact because the U-Net's time-embedding and ResNet time projections are Linear layers over
the batch (M = 2×batch rows): MKL computes a GEMM with a different M in a different summation order
(even M = 1 vs M = 2 differ by an ulp), and the sampler carries that ulp through the steps. Observed:
at most ~4e-6 of the largest magnitude. A picture given another seed's noise is off by 20-70% of it.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from brushwork.engine import vae as vae_stage
from brushwork.engine.denoise import GuidedDenoiser, sample
from brushwork.engine.engine import Engine
from brushwork.engine.latents import image_generators, initial_noise
from brushwork.engine.samplers import SAMPLERS, make_scheduler
from brushwork.models.store import ModelStore
from brushwork.recipe import Hires, Recipe
from tiny_models import write_tiny_checkpoint

PROMPT = "a red circle on a blue background"
OTHER_PROMPT = "two yellow squares"
SEED = 1000
UNRELATED_SEED = 987_654_321


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("seeds") / "tiny-sd1.safetensors"
    components = write_tiny_checkpoint("sd1", path)
    return path, components


@pytest.fixture(scope="module")
def engine():
    return Engine(ModelStore(allow_paths=True))


@pytest.fixture
def decoded(monkeypatch):
    """The latents of every decoded batch, in order (the engine's last tensor before pixels)."""
    seen: list[torch.Tensor] = []
    decode = vae_stage.decode

    def recording(vae, latents):
        seen.append(latents.detach().clone())
        return decode(vae, latents)

    monkeypatch.setattr(vae_stage, "decode", recording)
    return seen


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _same(batched: torch.Tensor, alone: torch.Tensor) -> None:
    """Equal up to float32 rounding of the batched U-Net matmuls (see the module's docstring)."""
    assert batched.shape == alone.shape
    diff, scale = (batched - alone).abs().max().item(), alone.abs().max().item()
    assert diff <= 1e-5 * max(scale, 1.0), f"max abs diff {diff:.3g} at scale {scale:.3g}"


def _same_pixels(batched, alone: np.ndarray) -> None:
    assert np.abs(_pixels(batched) - alone).max() <= 1


def _alone(engine, decoded, recipe: Recipe) -> tuple[torch.Tensor, np.ndarray]:
    """One picture of `recipe`, batch size 1: its final latents and its pixels."""
    result = engine.run(recipe.model_copy(update={"batch_size": 1}))
    return decoded[-1][0], _pixels(result.images[0].image)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_batch_and_group_give_each_picture_its_seeds_noise(model, engine, decoded, sampler):
    path, _ = model
    base = Recipe(prompt=PROMPT, model=str(path), sampler=sampler, steps=3, seed=SEED, width=16, height=16)

    # A batch of 3 with seeds s, s+1, s+2.
    batch = engine.run(base.model_copy(update={"batch_size": 3}))
    batch_latents = decoded[-1]
    assert [image.seed for image in batch.images] == [SEED, SEED + 1, SEED + 2]
    alone = {}
    for k, image in enumerate(batch.images):
        alone[(PROMPT, image.seed)] = _alone(engine, decoded, base.model_copy(update={"seed": image.seed}))
        _same(batch_latents[k], alone[(PROMPT, image.seed)][0])
        _same_pixels(image.image, alone[(PROMPT, image.seed)][1])

    # The server's grouping: unrelated jobs, seeds out of order, other prompts and CFG, one U-Net batch.
    group = [
        base.model_copy(update={"seed": SEED + 2}),
        base.model_copy(update={"prompt": OTHER_PROMPT, "seed": UNRELATED_SEED, "cfg_scale": 4.0, "batch_size": 2}),
        base.model_copy(update={"seed": SEED}),
    ]
    results = engine.generate_group(group)
    assert len(decoded) == 1 + 3 + 1  # one U-Net batch for the whole group
    group_latents = decoded[-1]
    row = 0
    for recipe, result in zip(group, results):
        for image in result.images:
            key = (recipe.prompt, image.seed)
            if key not in alone:
                alone[key] = _alone(engine, decoded, recipe.model_copy(update={"seed": image.seed}))
            _same(group_latents[row], alone[key][0])
            _same_pixels(image.image, alone[key][1])
            row += 1
    assert row == 4 and [i.seed for i in results[1].images] == [UNRELATED_SEED, UNRELATED_SEED + 1]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE Karras", "DPM++ 2M SDE"])
def test_hires_fix_second_pass_keeps_per_picture_noise(model, engine, decoded, sampler):
    """The second pass goes on drawing from each picture's own generator and Brownian tree."""
    path, _ = model
    recipe = Recipe(prompt=PROMPT, model=str(path), sampler=sampler, steps=2, seed=SEED, width=16, height=16,
                    batch_size=2, hires=Hires(scale=1.5, steps=2, denoising_strength=0.6))
    batch = engine.run(recipe)
    batch_latents = decoded[-1]
    for k, image in enumerate(batch.images):
        latents, pixels = _alone(engine, decoded, recipe.model_copy(update={"seed": image.seed}))
        _same(batch_latents[k], latents)
        _same_pixels(image.image, pixels)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE"])
def test_img2img_latent_noise_inpainting_keeps_per_picture_noise(model, engine, decoded, tmp_path, sampler):
    """img2img draws twice per picture (latent-noise fill, then the start noise), all from its own seed."""
    from PIL import Image

    path, _ = model
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "init.png")
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (4, 4, 12, 12))
    mask.save(tmp_path / "mask.png")
    recipe = Recipe(prompt=PROMPT, model=str(path), sampler=sampler, steps=4, seed=SEED, batch_size=3,
                    init_image=str(tmp_path / "init.png"), mask=str(tmp_path / "mask.png"), mask_blur=0,
                    inpainting_fill="latent noise", denoising_strength=0.75)
    batch = engine.run(recipe)
    batch_latents = decoded[-1]
    for k, image in enumerate(batch.images):
        latents, pixels = _alone(engine, decoded, recipe.model_copy(update={"seed": image.seed}))
        _same(batch_latents[k], latents)
        _same_pixels(image.image, pixels)


def test_ddim_with_eta_draws_each_pictures_noise_from_its_own_seed(model):
    """DDIM with eta > 0 (no Recipe field for it yet) adds noise in every step; the loop hands the
    scheduler every picture's generator, so that noise stays per picture too."""
    from brushwork.engine.conditioning import PromptEncoder

    _, components = model
    positive, negative = PromptEncoder(components, 1, torch.device("cpu"), torch.float32).encode_pair(PROMPT, "", 3)

    def run(seeds: list[int], eta: float) -> torch.Tensor:
        scheduler = make_scheduler("DDIM", components.scheduler_config, seeds)
        scheduler.step = functools.partial(scheduler.step, eta=eta)
        scheduler.set_timesteps(3)
        generators = image_generators(seeds)
        latents = initial_noise(generators, (4, 8, 8), torch.device("cpu"), torch.float32)
        n = len(seeds)
        denoiser = GuidedDenoiser(components.unet, [positive] * n, [negative] * n, [7.0] * n, steps=3, total_timesteps=3)
        with torch.inference_mode():
            return sample(denoiser, scheduler, latents * scheduler.init_noise_sigma, generators)

    seeds = [SEED + 1, UNRELATED_SEED, SEED]
    batched = run(seeds, eta=1.0)
    for k, seed in enumerate(seeds):
        _same(batched[k], run([seed], eta=1.0)[0])
    assert (batched - run(seeds, eta=0.0)).abs().max() > 0.1  # eta really added noise


def test_dpmpp_sde_gets_one_brownian_tree_per_picture(model):
    _, components = model
    scheduler = make_scheduler("DPM++ SDE Karras", components.scheduler_config, [5, 9, 5])
    assert list(scheduler.noise_sampler_seed) == [5, 9, 5]
    scheduler.set_timesteps(2)
    latents = torch.zeros(3, 4, 8, 8)
    scheduler.step(torch.zeros_like(latents), scheduler.timesteps[0], latents)
    trees = scheduler.noise_sampler.tree.trees
    assert len(trees) == 3
    sigma, sigma_next = scheduler.sigmas[0].item(), scheduler.sigmas[1].item()
    noise = scheduler.noise_sampler(sigma, sigma_next)
    assert torch.equal(noise[0], noise[2]) and not torch.equal(noise[0], noise[1])  # same seed, same noise


def test_mismatched_generators_fail_loudly(model):
    _, components = model
    scheduler = make_scheduler("Euler a", components.scheduler_config, [1, 2])
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        sample(lambda x, t, step: x, scheduler, torch.zeros(3, 4, 8, 8), image_generators([1, 2]))
