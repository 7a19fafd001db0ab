"""img2img, inpainting (ordinary and 9-channel checkpoints), 'only masked', outpainting, hires fix.

Reference: diffusers' StableDiffusionImg2ImgPipeline on the same tiny weights, seed and strength,
given the same encoded latents; tolerance one 8-bit level per channel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image

from brushwork.engine import latents as latent_stage
from brushwork.engine.engine import Engine
from brushwork.engine.img2img import crop_region, resize_image
from brushwork.errors import BrushworkError
from brushwork.infotext import parse_infotext
from brushwork.models.store import ModelStore
from brushwork.recipe import Hires, Outpaint, Recipe
from tiny_models import write_tiny_checkpoint

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img2img")
    made = {}
    for variant in ("sd1", "sd1-inpaint"):
        path = folder / f"{variant}.safetensors"
        made[variant] = (path, write_tiny_checkpoint(variant, path))
    return made


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).filter(
        __import__("PIL.ImageFilter", fromlist=["GaussianBlur"]).GaussianBlur(2))
    init.save(folder / "init.png")
    mask = Image.new("L", (80, 64), 0)
    mask.paste(255, (24, 16, 56, 48))
    mask.save(folder / "mask.png")
    mask.resize((40, 32)).save(folder / "small-mask.png")
    (folder / "not-an-image.png").write_text("hello")
    return folder


def _engine() -> Engine:
    return Engine(ModelStore(allow_paths=True))


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_img2img_matches_diffusers_img2img_pipeline(models, pictures):
    path, components = models["sd1"]
    recipe = Recipe(prompt=PROMPT, negative_prompt="blurry", model=str(path), init_image=str(pictures / "init.png"),
                    denoising_strength=0.6, sampler="Euler", steps=10, seed=5, batch_size=2)
    ours = np.stack([_pixels(g.image) for g in _engine().run(recipe).images])

    pipeline = StableDiffusionImg2ImgPipeline(
        vae=components.vae, text_encoder=components.text_encoders[0], tokenizer=components.tokenizers[0],
        unet=components.unet, scheduler=EulerDiscreteScheduler.from_config(components.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    init = Image.open(pictures / "init.png")
    latents = latent_stage.encode(components.vae, latent_stage.pil_to_pixels([init], torch.device("cpu"), torch.float32))
    theirs = pipeline(PROMPT, negative_prompt="blurry", image=latents, strength=0.6, num_inference_steps=10,
                      guidance_scale=7.0, num_images_per_prompt=2,
                      generator=[torch.Generator("cpu").manual_seed(s) for s in (5, 6)]).images
    assert ours.shape == (2, 64, 80, 3)
    assert np.abs(ours - np.stack([_pixels(i) for i in theirs])).max() <= 1


def test_strength_zero_returns_the_input_through_the_vae(models, pictures):
    path, components = models["sd1"]
    recipe = Recipe(prompt=PROMPT, model=str(path), init_image=str(pictures / "init.png"), denoising_strength=0.0, seed=1)
    ours = _pixels(_engine().run(recipe).images[0].image)
    init = Image.open(pictures / "init.png")
    with torch.no_grad():
        latents = latent_stage.encode(components.vae, latent_stage.pil_to_pixels([init], torch.device("cpu"), torch.float32))
    from brushwork.engine.vae import decode

    assert np.abs(ours - _pixels(decode(components.vae, latents)[0])).max() <= 1


def test_strength_sets_how_many_steps_run(models, pictures):
    path, _ = models["sd1"]
    seen = []
    recipe = Recipe(prompt=PROMPT, model=str(path), init_image=str(pictures / "init.png"), denoising_strength=0.5,
                    sampler="Euler", steps=10, seed=1)
    _engine().run(recipe, on_progress=lambda p: seen.append(p.total))
    assert seen and set(seen) == {5}


@pytest.mark.parametrize("variant", ["sd1", "sd1-inpaint"])
@pytest.mark.parametrize("fill", ["original", "fill", "latent noise", "latent nothing"])
def test_inpainting_keeps_every_pixel_outside_the_mask(models, pictures, variant, fill):
    path, _ = models[variant]
    recipe = Recipe(prompt=PROMPT, model=str(path), init_image=str(pictures / "init.png"), mask=str(pictures / "mask.png"),
                    mask_blur=2, inpainting_fill=fill, denoising_strength=1.0, steps=4, seed=3)
    result = _pixels(_engine().run(recipe).images[0].image)
    init = _pixels(Image.open(pictures / "init.png"))
    outside = np.ones((64, 80), bool)
    outside[16 - 6 : 48 + 6, 24 - 6 : 56 + 6] = False  # the mask plus its blur's reach
    assert np.array_equal(result[outside], init[outside])
    inside = (slice(20, 44), slice(28, 52))
    assert np.abs(result[inside] - init[inside]).mean() > 5  # the masked area was repainted


def test_inpaint_not_masked_and_only_masked(models, pictures):
    path, _ = models["sd1"]
    base = dict(prompt=PROMPT, model=str(path), init_image=str(pictures / "init.png"), mask=str(pictures / "mask.png"),
                mask_blur=0, steps=3, seed=3, denoising_strength=1.0)
    init = _pixels(Image.open(pictures / "init.png"))
    inverted = _pixels(_engine().run(Recipe(**base, inpainting_mask_invert=True)).images[0].image)
    assert np.array_equal(inverted[16:48, 24:56], init[16:48, 24:56])  # the masked part is now kept
    assert np.abs(inverted[:10] - init[:10]).mean() > 5

    result = _engine().run(Recipe(**base, inpaint_full_res=True, inpaint_full_res_padding=4, width=32, height=32))
    only = _pixels(result.images[0].image)
    assert only.shape == init.shape  # pasted back into the full picture
    outside = np.ones((64, 80), bool)
    outside[16:48, 24:56] = False
    assert np.array_equal(only[outside], init[outside])
    assert "Inpaint area: Only masked" in result.images[0].infotext


def test_crop_region_grows_to_the_working_aspect_inside_the_picture():
    mask = Image.new("L", (200, 100), 0)
    mask.paste(255, (10, 10, 30, 20))
    left, top, right, bottom = crop_region(mask, padding=5, width=64, height=64)
    assert (right - left) == (bottom - top) and left >= 0 and top >= 0 and right <= 200 and bottom <= 100
    assert left <= 5 and top <= 5 and right >= 35 and bottom >= 25


def test_outpainting_extends_the_canvas_and_keeps_the_middle(models, pictures):
    path, _ = models["sd1"]
    recipe = Recipe(prompt=PROMPT, model=str(path), init_image=str(pictures / "init.png"), mask_blur=2,
                    outpaint=Outpaint(left=16, bottom=8), denoising_strength=1.0, steps=3, seed=2)
    result = _pixels(_engine().run(recipe).images[0].image)
    assert result.shape == (72, 96, 3)
    init = _pixels(Image.open(pictures / "init.png"))
    assert np.array_equal(result[: 64 - 8, 16 + 8 :], init[: 64 - 8, 8:])  # away from the seam: untouched


def test_resize_modes():
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 50))
    assert resize_image(image, 64, 64, "just resize").size == (64, 64)
    cropped = resize_image(image, 64, 64, "crop and resize")
    assert cropped.size == (64, 64) and cropped.getpixel((0, 32))[0] == 255  # blue edge was cropped away
    filled = resize_image(image, 64, 64, "resize and fill")
    assert filled.size == (64, 64) and filled.getpixel((2, 2))[2] > 200  # edges stretched outwards


def test_hires_fix_upscales_and_runs_its_own_second_pass(models):
    path, _ = models["sd1"]
    totals = []
    recipe = Recipe(prompt=PROMPT, model=str(path), width=32, height=32, steps=4, sampler="Euler", seed=8,
                    hires=Hires(scale=2, steps=6, denoising_strength=0.5, upscaler="Latent (bicubic)"))
    result = _engine().run(recipe, on_progress=lambda p: totals.append(p.total))
    assert result.images[0].image.size == (64, 64)
    assert totals == [4] * 4 + [3] * 3  # first pass 4 steps, second pass int(6 × 0.5)
    infotext = result.images[0].infotext
    assert "Size: 32x32" in infotext and "Hires upscale: 2" in infotext and "Hires steps: 6" in infotext
    assert "Hires upscaler: Latent (bicubic)" in infotext and "Denoising strength: 0.5" in infotext
    parsed, _ = parse_infotext(infotext)
    assert parsed.hires == recipe.hires


def test_hires_resize_to_a_target_size(models):
    path, _ = models["sd1"]
    recipe = Recipe(prompt=PROMPT, model=str(path), width=32, height=32, steps=2, seed=8,
                    hires=Hires(resize_width=48, resize_height=64, upscaler="Latent (nearest)"))
    assert _engine().run(recipe).images[0].image.size == (48, 64)


def test_img2img_infotext_round_trip(models, pictures):
    path, _ = models["sd1"]
    recipe = Recipe(prompt=PROMPT, model=str(path), init_image=str(pictures / "init.png"), mask=str(pictures / "mask.png"),
                    mask_blur=6, inpainting_fill="latent noise", inpainting_mask_invert=True, inpaint_full_res=True,
                    inpaint_full_res_padding=12, denoising_strength=0.4, steps=2, seed=1)
    parsed, params = parse_infotext(_engine().run(recipe).images[0].infotext)
    assert params["Denoising strength"] == "0.4" and params["Mask blur"] == "6"
    for field in ("denoising_strength", "mask_blur", "inpainting_fill", "inpainting_mask_invert", "inpaint_full_res",
                  "inpaint_full_res_padding"):
        assert getattr(parsed, field) == getattr(recipe, field), field


def test_mask_of_another_size_is_resized_with_a_note(models, pictures):
    path, _ = models["sd1"]
    recipe = Recipe(prompt=PROMPT, model=str(path), init_image=str(pictures / "init.png"),
                    mask=str(pictures / "small-mask.png"), steps=2, seed=1)
    result = _engine().run(recipe)
    assert any("resized" in note for note in result.notes)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mask": "{dir}/not-an-image.png"}, "mask: not a readable image"),
        ({"init_image": "{dir}/not-an-image.png"}, "init_image: not a readable image"),
        ({"init_image": "{dir}/missing.png"}, "init_image: no such file"),
        ({"init_image": "bm90IGFuIGltYWdl"}, "init_image: not a readable image"),  # base64 of text
    ],
)
def test_bad_images_are_clear_errors(models, pictures, fields, message):
    path, _ = models["sd1"]
    fields = {"init_image": str(pictures / "init.png")} | {k: v.format(dir=pictures) for k, v in fields.items()}
    with pytest.raises(BrushworkError, match=message):
        _engine().run(Recipe(prompt=PROMPT, model=str(path), steps=2, seed=1, **fields))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"init_image": "x.png", "denoising_strength": 1.5}, "denoising_strength"),
        ({"init_image": "x.png", "denoising_strength": -0.1}, "denoising_strength"),
        ({"hires": {"scale": 9}}, "hires.scale"),
        ({"hires": {"scale": 1.0}}, "hires.scale"),
        ({"mask": "m.png"}, "needs an init_image"),
        ({"init_image": "x.png", "outpaint": {"left": 12}}, "outpaint.left"),
    ],
)
def test_bad_settings_are_rejected_before_anything_loads(fields, field):
    from pydantic import ValidationError

    from brushwork.recipe import describe_validation_error

    with pytest.raises(ValidationError) as error:
        Recipe(prompt=PROMPT, **fields)
    assert field in describe_validation_error(error.value)
