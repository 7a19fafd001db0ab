"""`brushwork train embedding`: textual inversion on a tiny SD 1.x model. The file is A1111's emb_params layout,
the engine uses it by file name and it changes the picture, the model's weights are untouched, and a stopped
run resumes to the same vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from brushwork.cli import main
from brushwork.engine.embeddings import load_embedding
from brushwork.engine.engine import Engine
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe
from brushwork.shapes import make_dataset
from tiny_loras import weights
from tiny_models import CLIP_L_WIDTH, write_tiny_checkpoint

FLAGS = ["--token", "hexshape", "--init-word", "star", "--vectors", "2", "--resolution", "64", "--lr", "5e-2",
         "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-embedding")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint("sd1", models / "Stable-diffusion" / "tiny.safetensors")
    make_dataset(root / "hexes", 4, seed=8, size=64, split="all")
    return root, models


def train(setup, output, *extra) -> int:
    root, models = setup
    return main(["train", "embedding", str(root / "hexes"), "--base", "tiny", "--models-dir", str(models),
                 "-o", str(output), *FLAGS, *extra])


def test_the_embedding_is_a1111s_layout_and_the_engine_uses_it(setup):
    root, models = setup
    output = models / "embeddings" / "hexshape.safetensors"
    before = weights(ModelStore(models).load("tiny").components)
    assert train(setup, output, "--steps", "5") == 0
    learnt = load_file(output)["emb_params"]
    assert learnt.shape == (2, CLIP_L_WIDTH)
    assert load_embedding(output, allow_pickle=False).count == 2

    engine = Engine(ModelStore(models))
    base = dict(steps=2, width=64, height=64, seed=3, model="tiny", sampler="Euler")
    plain = engine.run(Recipe(prompt="a red circle", **base)).images[0]
    used = engine.run(Recipe(prompt="a red hexshape", **base)).images[0]
    assert not np.array_equal(np.asarray(plain.image), np.asarray(used.image))
    assert 'TI hashes: "hexshape: ' in used.infotext
    after = weights(ModelStore(models).load("tiny").components)
    assert all(torch.equal(before[key], after[key]) for key in before)  # the model file is as it was


def test_a_stopped_run_resumes_to_the_same_vectors(setup, tmp_path, monkeypatch):
    whole = tmp_path / "whole.safetensors"
    assert train(setup, whole, "--steps", "6", "--checkpoint-every", "2") == 0
    import brushwork.train.embedding as trainer

    real, resumed = trainer.train_embedding, []

    def stop_after_three(*args, **kwargs):
        done = []
        kwargs["on_step"] = lambda stage, step, loss: done.append(step)
        kwargs["should_stop"] = lambda: len(done) >= 3 and not resumed
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_embedding", stop_after_three)
    parts = tmp_path / "parts.safetensors"
    assert train(setup, parts, "--steps", "6", "--checkpoint-every", "2") == 130
    resumed.append(True)
    assert train(setup, parts, "--steps", "6", "--checkpoint-every", "2", "--resume") == 0
    assert torch.equal(load_file(whole)["emb_params"], load_file(parts)["emb_params"])


def test_sample_pictures_use_the_vectors_of_their_step(setup, tmp_path):
    """The last sample is what the finished embedding paints: the vectors reach the painter's Engine."""
    root, models = setup
    output = tmp_path / "embeddings" / "hexshape.safetensors"
    assert train(setup, output, "--steps", "4", "--sample-every", "2", "--sample-prompt", "a red hexshape") == 0
    samples = sorted((tmp_path / "embeddings" / "hexshape.train" / "samples").glob("step-*.png"))
    assert [path.name for path in samples] == ["step-000002.png", "step-000004.png"]
    folder = tmp_path / "models"
    (folder / "embeddings").mkdir(parents=True)
    (folder / "embeddings" / "hexshape.safetensors").write_bytes(output.read_bytes())
    (folder / "Stable-diffusion").mkdir()
    (folder / "Stable-diffusion" / "tiny.safetensors").write_bytes(
        (models / "Stable-diffusion" / "tiny.safetensors").read_bytes())
    painted = Engine(ModelStore(folder)).run(Recipe(prompt="a red hexshape", seed=0, steps=20, width=64, height=64,
                                                    model="tiny")).images[0].image
    assert np.array_equal(np.asarray(Image.open(samples[-1])), np.asarray(painted))
    assert not np.array_equal(np.asarray(Image.open(samples[0])), np.asarray(painted))
