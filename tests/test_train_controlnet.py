"""`brushwork train controlnet` on a tiny SD 1.x model and drawn pairs: the file loads as a ControlNet, the base
stays frozen, a stopped run resumes to the same weights, and bad data folders are clear errors; `brushwork data
shapes --condition` draws the pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import brushwork.train.controlnet as trainer
from brushwork.cli import main
from brushwork.models.control import load_control_model
from brushwork.models.single_file import load_single_file
from tiny_models import write_tiny_checkpoint

FLAGS = ["--resolution", "64", "--lr", "1e-3", "--batch-size", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-controlnet")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint("sd1", models / "Stable-diffusion" / "tiny.safetensors")
    assert main(["data", "shapes", str(root / "pairs"), "--count", "4", "--condition", "canny"]) == 0
    return root, models


def train(setup, output, *extra) -> int:
    root, models = setup
    return main(["train", "controlnet", str(root / "pairs"), "--base", "tiny", "--models-dir", str(models),
                 "-o", str(output), *FLAGS, *extra])


def test_data_shapes_draws_each_condition(tmp_path):
    for condition in ("canny", "mask", "scribble"):
        folder = tmp_path / condition
        assert main(["data", "shapes", str(folder), "--count", "2", "--condition", condition]) == 0
        scene = json.loads((folder / "metadata.jsonl").read_text().splitlines()[0])
        control = np.asarray(Image.open(folder / "conditioning" / "00000.png").convert("L"), dtype=np.int16)
        assert control.shape == (64, 64) and control.max() > 200 and control.min() < 30
        x, y = (round(v * 63) for v in scene["objects"][0]["centre"])
        if condition == "mask":  # white inside the object, black far from every object
            assert control[y, x] > 200
        else:  # lines: the object's middle stays dark
            assert control[y, x] < 30
    with pytest.raises(SystemExit):
        main(["data", "shapes", str(tmp_path / "x"), "--count", "1", "--condition", "depth"])


def test_the_controlnet_trains_on_pairs_with_the_base_frozen_and_loads(setup, tmp_path):
    root, models = setup
    output = tmp_path / "edges.safetensors"
    before = {k: v.clone() for k, v in load_file(models / "Stable-diffusion" / "tiny.safetensors").items()}
    assert train(setup, output, "--steps", "3", "--sample-every", "3") == 0
    assert all(torch.equal(before[k], v) for k, v in load_file(models / "Stable-diffusion" / "tiny.safetensors").items())
    model = load_control_model(output, device="cpu", dtype=torch.float32)
    assert (model.kind, model.family) == ("controlnet", "sd1")
    weights = load_file(output)
    assert all(value.dtype == torch.float16 for value in weights.values())
    # The zero convolutions have learnt something (they start at zero, so the untrained net adds nothing).
    assert weights["controlnet_mid_block.weight"].abs().max() > 0
    # The control picture encoder halves as often as the tiny VAE (once).
    assert model.network.config.conditioning_embedding_out_channels == [16, 32]
    assert (output.parent / "edges.train" / "samples" / "step-000003.png").is_file()
    components = load_single_file(models / "Stable-diffusion" / "tiny.safetensors")
    assert model.network.config.cross_attention_dim == components.unet.config.cross_attention_dim


def test_a_stopped_run_resumes_to_the_same_weights(setup, tmp_path):
    whole, parts = tmp_path / "whole.safetensors", tmp_path / "parts.safetensors"
    assert train(setup, whole, "--steps", "4", "--checkpoint-every", "2") == 0
    real = trainer.train_controlnet

    def stopping(*args, **kwargs):
        done = []
        kwargs["on_step"] = lambda stage, step, loss: done.append(step)
        kwargs["should_stop"] = lambda: len(done) >= 2
        return real(*args, **kwargs)

    trainer.train_controlnet = stopping
    try:
        assert train(setup, parts, "--steps", "4", "--checkpoint-every", "2") == 130
    finally:
        trainer.train_controlnet = real
    assert train(setup, parts, "--steps", "4", "--checkpoint-every", "2", "--resume") == 0
    first, second = load_file(whole), load_file(parts)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_bad_pairs_are_clear_errors(setup, tmp_path, capsys):
    root, models = setup
    lonely = tmp_path / "lonely"
    assert main(["data", "shapes", str(lonely), "--count", "2"]) == 0
    capsys.readouterr()
    argv = ["train", "controlnet", str(lonely), "--base", "tiny", "--models-dir", str(models), "-o",
            str(tmp_path / "x.safetensors"), *FLAGS, "--steps", "1"]
    assert main(argv) == 2
    assert "no control pictures folder" in capsys.readouterr().err
    (lonely / "conditioning").mkdir()
    Image.new("RGB", (64, 64)).save(lonely / "conditioning" / "00000.png")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1 pictures have no control picture" in err and "00001.png" in err and "Traceback" not in err
    assert main([*argv, "--conditioning", "../up"]) == 2
    assert "conditioning" in capsys.readouterr().err
