"""`brushwork train dreambooth` on a tiny SD 1.x model: class pictures painted once by the base model (kept in
the state folder), their loss changes the result, the output is a checkpoint brushwork paints with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from brushwork.cli import main
from brushwork.engine.engine import Engine
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe
from brushwork.shapes import make_dataset
from tiny_models import write_tiny_checkpoint

FLAGS = ["--instance-prompt", "a photo of sks shape", "--class-prompt", "a photo of a shape", "--resolution", "64",
         "--steps", "3", "--lr", "1e-4", "--class-steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dreambooth")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint("sd1", models / "Stable-diffusion" / "tiny.safetensors")
    make_dataset(root / "subject", 2, seed=9, size=64, split="all")
    for caption in (root / "subject").glob("*.txt"):
        caption.unlink()  # DreamBooth's pictures need no captions: the instance prompt is theirs
    (root / "subject" / "metadata.jsonl").unlink()
    return root, models


def train(setup, output, *extra) -> int:
    root, models = setup
    return main(["train", "dreambooth", str(root / "subject"), "--base", "tiny", "--models-dir", str(models),
                 "-o", str(output), *FLAGS, *extra])


def test_prior_preservation_paints_once_and_changes_the_result(setup, tmp_path):
    root, models = setup
    with_prior = tmp_path / "with.safetensors"
    assert train(setup, with_prior, "--class-images", "2") == 0
    classes = sorted((tmp_path / "with.train" / "class-images").glob("class-*.png"))
    assert len(classes) == 2
    stamps = [path.stat().st_mtime_ns for path in classes]
    assert train(setup, with_prior, "--class-images", "2") == 0  # again: the class pictures are not painted again
    assert [path.stat().st_mtime_ns for path in classes] == stamps

    without = tmp_path / "without.safetensors"
    assert train(setup, without, "--class-images", "2", "--prior-weight", "0") == 0
    a, b = load_file(with_prior), load_file(without)
    unet = [key for key in a if key.startswith("model.diffusion_model.")]
    assert any(not torch.equal(a[key], b[key]) for key in unet)  # the prior's loss changed the training

    base = load_file(models / "Stable-diffusion" / "tiny.safetensors")
    assert any(not torch.equal(a[key], base[key].to(a[key].dtype)) for key in unet)
    engine = Engine(ModelStore(allow_paths=True))
    recipe = dict(prompt="a photo of sks shape", steps=2, width=64, height=64, seed=1, sampler="Euler")
    tuned = engine.run(Recipe(**recipe, model=str(with_prior))).images[0].image
    original = engine.run(Recipe(**recipe, model=str(models / "Stable-diffusion" / "tiny.safetensors"))).images[0].image
    assert not np.array_equal(np.asarray(tuned), np.asarray(original))


def test_bad_requests_are_clear(setup, tmp_path, capsys):
    root, models = setup
    code = main(["train", "dreambooth", str(root / "subject"), "--base", "tiny", "--models-dir", str(models),
                 "-o", str(tmp_path / "x.safetensors"), "--instance-prompt", "sks", "--class-images", "2",
                 "--resolution", "64", "--no-progress"])
    assert code == 2 and "needs a class prompt (class_prompt, --class-prompt)" in capsys.readouterr().err


def test_sample_pictures_show_the_model_as_it_trains(setup, tmp_path):
    output = tmp_path / "sampled.safetensors"
    assert train(setup, output, "--sample-every", "2", "--steps", "4", "--lr", "1e-2") == 0
    samples = sorted((tmp_path / "sampled.train" / "samples").glob("step-*.png"))
    assert [path.name for path in samples] == ["step-000002.png", "step-000004.png"]
    first, last = (np.asarray(Image.open(path)) for path in samples)
    assert not np.array_equal(first, last)  # painted with the weights of their step, not the base's


def test_an_sdxl_dreambooth_checkpoint_loads_as_sdxl_and_paints(setup, tmp_path):
    root, models = setup
    write_tiny_checkpoint("sdxl", models / "Stable-diffusion" / "xl.safetensors")
    output = tmp_path / "xl-subject.safetensors"
    assert main(["train", "dreambooth", str(root / "subject"), "--base", "xl", "--models-dir", str(models),
                 "-o", str(output), *FLAGS, "--steps", "2", "--lr", "1e-3", "--train-text-encoder",
                 "--class-prompt", "a shape", "--class-images", "1"]) == 0
    tuned = ModelStore(allow_paths=True).load(str(output))
    assert tuned.components.family == "sdxl"
    base = load_file(models / "Stable-diffusion" / "xl.safetensors")
    saved = load_file(output)
    changed = [key for key in saved if key.startswith("conditioner.embedders.1.") and key in base
               and not torch.equal(saved[key], base[key].to(saved[key].dtype))]
    assert changed  # the second text encoder trained too
    recipe = Recipe(prompt="a photo of sks shape", steps=2, width=64, height=64, seed=1, sampler="Euler",
                    model=str(output))
    assert Engine(ModelStore(allow_paths=True)).run(recipe).images[0].image.size == (64, 64)


def test_a_base_with_its_own_scaling_and_schedule_keeps_them(setup, tmp_path):
    """The embedded model's latent scaling and noise schedule live in its yaml; a DreamBooth of it without them
    would decode every picture wrongly."""
    root, models = setup
    write_tiny_checkpoint("sd1", models / "Stable-diffusion" / "own.safetensors", yaml_config={
        "model": {"params": {"scale_factor": 0.7, "linear_end": 0.03, "parameterization": "v"}}})
    output = tmp_path / "own-subject.safetensors"
    assert main(["train", "dreambooth", str(root / "subject"), "--base", "own", "--models-dir", str(models),
                 "-o", str(output), *FLAGS, "--steps", "1"]) == 0
    tuned = ModelStore(allow_paths=True).load(str(output)).components
    assert tuned.vae.config.scaling_factor == 0.7
    assert tuned.scheduler_config["beta_end"] == 0.03 and tuned.prediction_type == "v_prediction"
