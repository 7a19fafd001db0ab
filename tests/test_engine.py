"""The engine against diffusers' own pipelines on the same tiny weights, and its A1111 behaviours.

Reference comparisons load our single-file checkpoint through brushwork and run diffusers'
pipeline on the original in-memory modules, with the same scheduler, seed and a plain prompt.
Tolerance: at most 1/255 per pixel channel (one 8-bit level; the math is the same, only float
summation order may differ).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

from brushwork.engine.engine import Engine
from brushwork.errors import Cancelled
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe
from tiny_models import to_pipeline, write_tiny_checkpoint

PROMPT = "a red circle on a blue background"
NEGATIVE = "blurry"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    made = {}
    for variant in ("sd1", "sd2-v", "sdxl"):
        path = folder / f"tiny-{variant}.safetensors"
        made[variant] = (path, write_tiny_checkpoint(variant, path))
    return made


def _engine() -> Engine:
    return Engine(ModelStore(allow_paths=True))


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _reference(components, scheduler_cls, options, recipe: Recipe) -> np.ndarray:
    pipeline = to_pipeline(components)
    pipeline.scheduler = scheduler_cls.from_config(components.scheduler_config, **options)
    pipeline.set_progress_bar_config(disable=True)
    output = pipeline(
        recipe.prompt,
        negative_prompt=recipe.negative_prompt,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.cfg_scale,
        width=recipe.width,
        height=recipe.height,
        generator=[torch.Generator("cpu").manual_seed(recipe.seed + i) for i in range(recipe.batch_size)],
        num_images_per_prompt=recipe.batch_size,
        output_type="pil",
    )
    return np.stack([_pixels(image) for image in output.images])


@pytest.mark.parametrize(
    ("variant", "sampler", "scheduler_cls", "options"),
    [
        ("sd1", "Euler", EulerDiscreteScheduler, {}),
        ("sd1", "Euler a", EulerAncestralDiscreteScheduler, {}),
        ("sd2-v", "DPM++ 2M Karras", DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
        ("sdxl", "Euler", EulerDiscreteScheduler, {}),
    ],
)
def test_engine_matches_diffusers_pipeline(checkpoints, variant, sampler, scheduler_cls, options):
    path, components = checkpoints[variant]
    recipe = Recipe(prompt=PROMPT, negative_prompt=NEGATIVE, model=str(path), sampler=sampler, steps=4,
                    cfg_scale=6.0, seed=1234, width=64, height=64, batch_size=2)
    result = _engine().run(recipe)
    ours = np.stack([_pixels(g.image) for g in result.images])
    theirs = _reference(components, scheduler_cls, options, recipe)
    assert ours.shape == theirs.shape == (2, 64, 64, 3)
    assert np.abs(ours - theirs).max() <= 1
    assert ours.std() > 5  # a real picture, not a constant


def test_seed_gives_same_image_at_any_batch_size(checkpoints):
    path, _ = checkpoints["sd1"]
    engine = _engine()
    batch = engine.run(Recipe(prompt=PROMPT, model=str(path), sampler="Euler a", steps=3, seed=7, batch_size=3))
    single = engine.run(Recipe(prompt=PROMPT, model=str(path), sampler="Euler a", steps=3, seed=9))
    assert [g.seed for g in batch.images] == [7, 8, 9]
    assert np.abs(_pixels(batch.images[2].image) - _pixels(single.images[0].image)).max() <= 1


def test_batch_count_continues_seeds_and_resolves_recipe(checkpoints):
    path, _ = checkpoints["sd1"]
    result = _engine().run(Recipe(prompt=PROMPT, model=str(path), steps=2, seed=100, batch_size=2, batch_count=2))
    assert [g.seed for g in result.images] == [100, 101, 102, 103]
    assert [g.index for g in result.images] == [0, 1, 2, 3]
    assert result.recipe.width == result.recipe.height == 64  # the model's native size, from its metadata
    assert result.recipe.model == "tiny-sd1"
    assert "Seed: 102" in result.images[2].infotext and "Model hash: " in result.images[2].infotext


def test_random_seed_is_resolved_and_recorded(checkpoints):
    path, _ = checkpoints["sd1"]
    result = _engine().run(Recipe(prompt=PROMPT, model=str(path), steps=1, width=64, height=64))
    assert 0 <= result.recipe.seed < 2**32
    assert f"Seed: {result.recipe.seed}" in result.images[0].infotext


def test_progress_reports_every_step_and_cancellation_stops(checkpoints):
    path, _ = checkpoints["sd1"]
    seen = []
    recipe = Recipe(prompt=PROMPT, model=str(path), steps=5, seed=1, width=64, height=64)
    _engine().run(recipe, on_progress=lambda p: seen.append((p.step, p.total, p.preview().size)))
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5] and all(s[1] == 5 for s in seen)
    assert seen[0][2] == (32, 32)  # the latent-sized cheap preview (tiny VAE: 2x)

    steps_run = []
    with pytest.raises(Cancelled):
        _engine().run(recipe, on_progress=lambda p: steps_run.append(p.step), should_stop=lambda: len(steps_run) >= 2)
    assert steps_run == [1, 2]


def test_prompt_emphasis_and_editing_change_the_picture(checkpoints):
    path, _ = checkpoints["sd1"]
    engine = _engine()

    def picture(prompt: str) -> np.ndarray:
        recipe = Recipe(prompt=prompt, model=str(path), sampler="Euler", steps=4, seed=3, width=64, height=64)
        return _pixels(engine.run(recipe).images[0].image)

    plain = picture("red circle")
    assert np.array_equal(plain, picture("red circle"))  # deterministic
    assert not np.array_equal(plain, picture("(red:1.5) circle"))
    assert not np.array_equal(plain, picture("[red:blue:0.5] circle"))
    assert np.abs(plain - picture("[red:blue:1000] circle")).max() <= 1  # the edit never happens


def test_long_prompts_and_clip_skip(checkpoints):
    path, _ = checkpoints["sd1"]
    engine = _engine()
    long_prompt = ", ".join(["a red circle on a blue background"] * 15)
    recipe = Recipe(prompt=long_prompt, model=str(path), steps=2, seed=3, width=64, height=64)
    long_image = engine.run(recipe).images[0].image
    skip_image = engine.run(recipe.model_copy(update={"clip_skip": 2})).images[0].image
    assert not np.array_equal(_pixels(long_image), _pixels(skip_image))
    assert "Clip skip: 2" in engine.run(recipe.model_copy(update={"clip_skip": 2})).images[0].infotext


@pytest.mark.parametrize("sampler", sorted(__import__("brushwork.engine.samplers", fromlist=["SAMPLERS"]).SAMPLERS))
def test_every_sampler_makes_a_picture(checkpoints, sampler):
    path, _ = checkpoints["sd1"]
    engine = _engine()
    recipe = Recipe(prompt=PROMPT, model=str(path), sampler=sampler, steps=3, seed=11, width=32, height=32)
    first = _pixels(engine.run(recipe).images[0].image)
    assert first.shape == (32, 32, 3) and first.std() > 1
    assert np.array_equal(first, _pixels(engine.run(recipe).images[0].image))  # seeded: reproducible


def test_inpainting_checkpoint_does_txt2img_like_diffusers_inpaint_pipeline(tmp_path):
    """A1111 paints with a 9-channel model in txt2img by masking everything over a grey picture;
    diffusers' inpaint pipeline with an all-white mask at strength 1 is the same computation."""
    from PIL import Image

    from brushwork.engine.latents import txt2img_inpaint_conditioning

    path = tmp_path / "tiny-inpaint.safetensors"
    components = write_tiny_checkpoint("sd1-inpaint", path)
    recipe = Recipe(prompt=PROMPT, negative_prompt=NEGATIVE, model=str(path), sampler="Euler", steps=4, seed=21,
                    width=64, height=64)
    ours = _pixels(_engine().run(recipe).images[0].image)

    pipeline = to_pipeline(components)
    pipeline.scheduler = EulerDiscreteScheduler.from_config(components.scheduler_config)
    pipeline.set_progress_bar_config(disable=True)
    masked_latents = txt2img_inpaint_conditioning(components.vae, 1, 64, 64)[:, 1:]
    theirs = pipeline(
        PROMPT, negative_prompt=NEGATIVE, image=Image.new("RGB", (64, 64), (128, 128, 128)),
        mask_image=Image.new("L", (64, 64), 255), masked_image_latents=masked_latents, strength=1.0,
        num_inference_steps=4, guidance_scale=7.0, width=64, height=64,
        generator=torch.Generator("cpu").manual_seed(21),
    ).images[0]
    assert np.abs(ours - _pixels(theirs)).max() <= 1


def test_group_of_jobs_runs_as_one_batch_with_each_picture_as_alone(checkpoints):
    from brushwork.engine.engine import groupable

    path, _ = checkpoints["sd1"]
    engine = _engine()
    base = dict(model=str(path), sampler="Euler a", steps=3, width=32, height=32)
    recipes = [
        Recipe(prompt="a red circle", seed=1, cfg_scale=7, **base),
        Recipe(prompt="two blue squares", negative_prompt="blurry", seed=50, cfg_scale=3, batch_size=2, **base),
        Recipe(prompt=" ".join(["green star"] * 50), seed=9, **base),  # two chunks: its own U-Net batch
    ]
    batches = []
    results = engine.generate_group(recipes, on_progress=lambda p: batches.append(p.step))
    assert [len(r.images) for r in results] == [1, 2, 1]
    assert batches.count(1) == 2  # two U-Net batches: the 1-chunk jobs together, the 2-chunk one alone
    for recipe, result in zip(recipes, results):
        alone = engine.run(recipe)
        for grouped, single in zip(result.images, alone.images):
            assert grouped.seed == single.seed and grouped.infotext == single.infotext
            assert np.abs(_pixels(grouped.image) - _pixels(single.image)).max() <= 1
    assert groupable(recipes[0]) == groupable(recipes[1])
    assert groupable(recipes[0].model_copy(update={"steps": 4})) != groupable(recipes[0])
    assert groupable(recipes[0].model_copy(update={"batch_count": 2})) is None
    with pytest.raises(ValueError):
        engine.generate_group([recipes[0], recipes[0].model_copy(update={"width": 64})])
