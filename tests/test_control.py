"""ControlNet and T2I-Adapter units in the Engine: the same pictures as diffusers' own pipelines on the same
tiny weights, and the A1111 extension's weight, start/end and control modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    MultiControlNetModel,
    StableDiffusionAdapterPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
)
from PIL import Image, ImageDraw

from brushwork.engine.engine import Engine
from brushwork.errors import BrushworkError
from brushwork.models.store import ModelStore
from brushwork.recipe import ControlUnit, Recipe
from tiny_controls import write_tiny_adapter, write_tiny_controlnet
from tiny_models import write_tiny_checkpoint

PROMPT = "a red circle on a blue background"
STEPS = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder: tiny SD 1.x and SDXL checkpoints, two SD 1.x ControlNets, an SDXL one and an adapter."""
    root = tmp_path_factory.mktemp("models")
    (root / "Stable-diffusion").mkdir()
    (root / "ControlNet").mkdir()
    made = {
        "sd1": write_tiny_checkpoint("sd1", root / "Stable-diffusion" / "tiny-sd1.safetensors"),
        "sdxl": write_tiny_checkpoint("sdxl", root / "Stable-diffusion" / "tiny-sdxl.safetensors"),
        "edges": write_tiny_controlnet(root / "ControlNet" / "edges", family="sd1", layout="folder", seed=1),
        "blobs": write_tiny_controlnet(root / "ControlNet" / "blobs.safetensors", family="sd1", layout="original", seed=2),
        "xl": write_tiny_controlnet(root / "ControlNet" / "xl", family="sdxl", layout="folder", seed=3),
        "adapter": write_tiny_adapter(root / "ControlNet" / "t2iadapter_tiny", layout="folder", seed=4),
    }
    return root, made


def _picture(path, box) -> str:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle(box, outline="white", width=2)
    image.save(path)
    return str(path)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    return _picture(folder / "left.png", (4, 10, 30, 40)), _picture(folder / "right.png", (34, 20, 60, 60))


def _engine(root) -> Engine:
    return Engine(ModelStore(root, allow_paths=True))


def _recipe(model: str, units: list[ControlUnit], **fields) -> Recipe:
    settings = dict(prompt=PROMPT, negative_prompt="blurry", model=model, sampler="Euler", steps=STEPS, cfg_scale=6.0,
                    seed=1234, width=64, height=64, batch_size=2, control_units=units)
    return Recipe(**(settings | fields))


def _ours(root, recipe: Recipe) -> np.ndarray:
    return np.stack([np.asarray(image.image, dtype=np.int16) for image in _engine(root).run(recipe).images])


def _theirs(pipeline, recipe: Recipe, **control) -> np.ndarray:
    pipeline.scheduler = EulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    output = pipeline(recipe.prompt, negative_prompt=recipe.negative_prompt, num_inference_steps=recipe.steps,
                      guidance_scale=recipe.cfg_scale, width=64, height=64, num_images_per_prompt=recipe.batch_size,
                      generator=[torch.Generator().manual_seed(recipe.seed + i) for i in range(recipe.batch_size)],
                      output_type="pil", **control)
    return np.stack([np.asarray(image, dtype=np.int16) for image in output.images])


def _sd1_pipeline(components, controlnet):
    return StableDiffusionControlNetPipeline(
        vae=components.vae, text_encoder=components.text_encoders[0], tokenizer=components.tokenizers[0],
        unet=components.unet, controlnet=controlnet, scheduler=EulerDiscreteScheduler.from_config(components.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def test_one_unit_matches_diffusers_controlnet_pipeline(models, pictures):
    root, made = models
    recipe = _recipe("tiny-sd1", [ControlUnit(model="edges", image=pictures[0], resize_mode="Just Resize")])
    ours = _ours(root, recipe)
    theirs = _theirs(_sd1_pipeline(made["sd1"], made["edges"]), recipe, image=Image.open(pictures[0]))
    assert np.abs(ours - theirs).max() <= 1
    plain = _ours(root, recipe.model_copy(update={"control_units": []}))
    assert np.abs(ours - plain).max() > 10  # the control changed the picture


def test_two_units_match_multi_controlnet(models, pictures):
    root, made = models
    # A1111 runs a unit at evaluation i of n when start <= i/n <= end; diffusers when start <= i/n and
    # (i + 1)/n <= end. With 4 steps, A1111's end 0.5 (i = 0..2) is diffusers' end 0.75.
    units = [ControlUnit(model="edges", image=pictures[0], weight=0.8, resize_mode="Just Resize"),
             ControlUnit(model="blobs", image=pictures[1], weight=1.3, guidance_start=0.25, guidance_end=0.5,
                         resize_mode="Just Resize")]
    recipe = _recipe("tiny-sd1", units)
    multi = MultiControlNetModel([made["edges"], made["blobs"]])
    theirs = _theirs(_sd1_pipeline(made["sd1"], multi), recipe, image=[Image.open(p) for p in pictures],
                     controlnet_conditioning_scale=[0.8, 1.3], control_guidance_start=[0.0, 0.25],
                     control_guidance_end=[1.0, 0.75])
    assert np.abs(_ours(root, recipe) - theirs).max() <= 1


def test_sdxl_unit_matches_diffusers_sdxl_controlnet_pipeline(models, pictures):
    root, made = models
    components = made["sdxl"]
    recipe = _recipe("tiny-sdxl", [ControlUnit(model="xl", image=pictures[0], resize_mode="Just Resize")])
    pipeline = StableDiffusionXLControlNetPipeline(
        vae=components.vae, text_encoder=components.text_encoders[0], text_encoder_2=components.text_encoders[1],
        tokenizer=components.tokenizers[0], tokenizer_2=components.tokenizers[1], unet=components.unet,
        controlnet=made["xl"], scheduler=EulerDiscreteScheduler.from_config(components.scheduler_config))
    theirs = _theirs(pipeline, recipe, image=Image.open(pictures[0]))
    assert np.abs(_ours(root, recipe) - theirs).max() <= 1


def test_adapter_unit_matches_diffusers_adapter_pipeline(models, pictures):
    root, made = models
    components = made["sd1"]
    recipe = _recipe("tiny-sd1", [ControlUnit(model="t2iadapter_tiny", image=pictures[1], weight=0.7,
                                              resize_mode="Just Resize")])
    pipeline = StableDiffusionAdapterPipeline(
        vae=components.vae, text_encoder=components.text_encoders[0], tokenizer=components.tokenizers[0],
        unet=components.unet, adapter=made["adapter"],
        scheduler=EulerDiscreteScheduler.from_config(components.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    theirs = _theirs(pipeline, recipe, image=Image.open(pictures[1]), adapter_conditioning_scale=0.7)
    ours = _ours(root, recipe)
    assert np.abs(ours - theirs).max() <= 1
    assert np.abs(ours - _ours(root, recipe.model_copy(update={"control_units": []}))).max() > 10


def test_weight_zero_is_no_control_and_modes_differ(models, pictures):
    root, _ = models
    unit = ControlUnit(model="edges", image=pictures[0])
    plain = _ours(root, _recipe("tiny-sd1", []))
    assert np.array_equal(_ours(root, _recipe("tiny-sd1", [unit.model_copy(update={"weight": 0.0})])), plain)
    balanced = _ours(root, _recipe("tiny-sd1", [unit]))
    pictures_by_mode = [_ours(root, _recipe("tiny-sd1", [unit.model_copy(update={"control_mode": mode})]))
                        for mode in ("My prompt is more important", "ControlNet is more important")]
    assert all(np.abs(balanced - other).max() > 3 for other in pictures_by_mode)
    assert np.abs(pictures_by_mode[0] - pictures_by_mode[1]).max() > 3
    # Stopping at 0.3 leaves the last steps, which change a 4-step picture least, uncontrolled.
    early_stop = _ours(root, _recipe("tiny-sd1", [unit.model_copy(update={"guidance_end": 0.3})]))
    assert np.abs(balanced - early_stop).max() > 1


def test_unit_works_in_img2img_and_hires(models, pictures):
    root, _ = models
    unit = ControlUnit(model="edges", image=pictures[0])
    img2img = _recipe("tiny-sd1", [], init_image=pictures[1], denoising_strength=0.6)
    assert np.abs(_ours(root, img2img.model_copy(update={"control_units": [unit]})) - _ours(root, img2img)).max() > 3
    # The unit's picture defaults to the init image in img2img, as in the extension.
    same = _ours(root, img2img.model_copy(update={"control_units": [ControlUnit(model="edges", image=pictures[1])]}))
    assert np.array_equal(same, _ours(root, img2img.model_copy(update={"control_units": [ControlUnit(model="edges")]})))
    hires = _recipe("tiny-sd1", [unit], hires={"scale": 2.0, "upscaler": "Latent", "steps": 2}, batch_size=1)
    engine = _engine(root)
    made = []
    controls = engine.controls
    engine.extension_providers[0] = lambda *args: made.append(controls(*args)) or made[-1]
    result = engine.run(hires)
    assert result.images[0].image.size == (128, 128)
    # Each pass gets its own unit, its control picture fitted to that pass's size.
    assert [tuple(extensions[0].hint.shape[-2:]) for extensions in made] == [(64, 64), (128, 128)]


def test_family_mismatch_and_missing_model_are_clear_errors(models, pictures):
    root, _ = models
    with pytest.raises(BrushworkError, match="SD 1.x.*SDXL"):
        _engine(root).run(_recipe("tiny-sdxl", [ControlUnit(model="edges", image=pictures[0])]))
    with pytest.raises(BrushworkError, match="controlnet 'nothing' not found"):
        _engine(root).run(_recipe("tiny-sd1", [ControlUnit(model="nothing", image=pictures[0])]))
    with pytest.raises(BrushworkError, match="only masked"):
        _engine(root).run(_recipe("tiny-sd1", [ControlUnit(model="edges", image=pictures[0])], init_image=pictures[1],
                                  mask=pictures[0], inpaint_full_res=True))
    with pytest.raises(BrushworkError, match="control_units.0.image: give the unit a picture"):
        _engine(root).run(_recipe("tiny-sd1", [ControlUnit(model="edges")]))
    with pytest.raises(BrushworkError, match="control_units.0.module: .*'sobel'"):
        _engine(root).run(_recipe("tiny-sd1", [ControlUnit(model="edges", image=pictures[0], module="sobel")]))


def test_unit_fields_validate_as_the_extension_takes_them():
    unit = ControlUnit(model="m", image="x.png", control_mode=2, resize_mode=0)
    assert (unit.control_mode, unit.resize_mode) == ("ControlNet is more important", "Just Resize")
    with pytest.raises(ValueError, match="guidance_start"):
        ControlUnit(model="m", guidance_start=0.8, guidance_end=0.2)


def test_cli_control_flag_equals_the_recipe_unit_and_bad_units_exit_2(models, pictures, tmp_path, capsys):
    from brushwork.cli import main
    from brushwork.commands.common import parse_control

    root, _ = models
    assert parse_control(f"model=edges,image={pictures[0]},weight=0.5,end=0.8,mode=prompt,resize=fill,a=50,pixel-perfect") == {
        "model": "edges", "image": pictures[0], "weight": "0.5", "guidance_end": "0.8",
        "control_mode": "My prompt is more important", "resize_mode": "Resize and Fill", "threshold_a": "50",
        "pixel_perfect": True}
    out = tmp_path / "out"
    argv = ["generate", PROMPT, "-n", "blurry", "--models-dir", root, "--model", "tiny-sd1", "--sampler", "Euler",
            "--steps", STEPS, "--cfg-scale", 6, "--seed", 1234, "-W", 64, "-H", 64, "--no-progress", "-o", out,
            "--control", f"model=edges,image={pictures[0]},resize=just"]
    assert main([str(a) for a in argv]) == 0
    written = np.asarray(Image.open(sorted(out.glob("*.png"))[0]), dtype=np.int16)
    wanted = _ours(root, _recipe("tiny-sd1", [ControlUnit(model="edges", image=pictures[0], resize_mode="Just Resize")],
                                 batch_size=1))[0]
    assert np.array_equal(written, wanted)
    capsys.readouterr()
    for unit, message in ((f"image={pictures[0]}", "give the unit's model"), ("model=edges,colour=red", "unknown key"),
                          (f"model=edges,image={pictures[0]},weight=9", "weight")):
        assert main([str(a) for a in argv[:-1]] + [unit]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_controlnet_folder_lists_files_and_diffusers_folders_but_not_annotators(models):
    root, _ = models
    (root / "ControlNet" / "annotators").mkdir(exist_ok=True)
    (root / "ControlNet" / "annotators" / "ControlNetHED.pth").write_bytes(b"weights")
    names = [entry.name for entry in ModelStore(root).entries("controlnet") if not entry.embedded]
    assert {"blobs.safetensors", "edges", "t2iadapter_tiny", "xl"} <= set(names)
    assert names == sorted(names) and not any(name.startswith("annotators") for name in names)


def test_grouped_batch_mixing_jobs_with_and_without_units_paints_each_as_alone(models, pictures):
    root, _ = models
    engine = _engine(root)
    with_unit = _recipe("tiny-sd1", [ControlUnit(model="edges", image=pictures[0], control_mode=2)], batch_size=1)
    without = _recipe("tiny-sd1", [], batch_size=1, seed=99)
    other_unit = _recipe("tiny-sd1", [ControlUnit(model="blobs", image=pictures[1], weight=0.6)], batch_size=1, seed=7)
    grouped = engine.generate_group([with_unit, without, other_unit])
    for recipe, result in zip((with_unit, without, other_unit), grouped):
        alone = np.asarray(engine.run(recipe).images[0].image, dtype=np.int16)
        assert np.abs(np.asarray(result.images[0].image, dtype=np.int16) - alone).max() <= 1


def test_original_layout_file_paints_as_its_diffusers_folder_and_units_work_in_inpainting(models, pictures, tmp_path):
    root, _ = models
    folder = root / "ControlNet"
    write_tiny_controlnet(folder / "twin-original.safetensors", family="sd1", layout="original", seed=5)
    write_tiny_controlnet(folder / "twin-folder", family="sd1", layout="folder", seed=5)
    recipe = _recipe("tiny-sd1", [], batch_size=1)
    original = _ours(root, recipe.model_copy(update={"control_units": [ControlUnit(model="twin-original", image=pictures[0])]}))
    diffusers_folder = _ours(root, recipe.model_copy(update={"control_units": [ControlUnit(model="twin-folder", image=pictures[0])]}))
    assert np.array_equal(original, diffusers_folder)

    # An inpainting checkpoint's U-Net takes 9 channels; its ControlNet reads the 4 latent ones.
    write_tiny_checkpoint("sd1-inpaint", root / "Stable-diffusion" / "tiny-inpaint.safetensors")
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 0).save(mask)
    ImageDraw.Draw(image := Image.open(mask)).rectangle((16, 16, 48, 48), fill=255)
    image.save(mask)
    for model in ("tiny-sd1", "tiny-inpaint"):
        inpaint = _recipe(model, [], batch_size=1, init_image=pictures[1], mask=str(mask), denoising_strength=0.9)
        controlled = _ours(root, inpaint.model_copy(update={"control_units": [ControlUnit(model="edges", image=pictures[0])]}))
        assert np.abs(controlled - _ours(root, inpaint)).max() > 3
