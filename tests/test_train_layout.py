"""What teaches the embedded model where to paint (brushwork.train.layout): labels, masks, batches, the probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from brushwork.cli import main
from brushwork.errors import BrushworkError
from brushwork.shapes import POSITIONS, make_dataset
from brushwork.train.data import load_folder, tokenize
from brushwork.train.diffusion import DiffusionTrainer, LatentSet
from brushwork.train.layout import NO_POSITION, LayoutTargets, PositionProbe, object_masks, position_labels
from brushwork.train.models import TOY_SPEC, build_components, build_text_encoder
from brushwork.train.settings import resolve
from brushwork.train.vae import encode_dataset, latent_scale

IMAGES = 40


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> tuple[Path, list]:
    folder = tmp_path_factory.mktemp("layout")
    return folder, make_dataset(folder, IMAGES, seed=3, size=32)


def test_position_labels_are_what_the_caption_says() -> None:
    labels = position_labels(["a red circle in the top left corner", "two blue squares", "green star, left",
                              "a picture of a small white cross in the middle on a red background"])
    assert labels.tolist() == [POSITIONS.index("top left"), NO_POSITION, POSITIONS.index("left"),
                               POSITIONS.index("centre")]


def test_object_masks_cover_the_drawn_objects(drawn, tmp_path: Path) -> None:
    folder, scenes = drawn
    data = load_folder(folder)
    masks = object_masks(folder, data.names, 8)
    assert masks.shape == (IMAGES, 1, 8, 8)
    for mask, scene in zip(masks, scenes):
        for obj in scene.objects:  # the latent pixel under each object's centre is covered
            assert mask[0, int(obj.centre[1] * 8), int(obj.centre[0] * 8)] == 1
        if scene.count == 1 and scene.objects[0].size == "small" and scene.objects[0].position == "top left":
            assert mask[0, 7, 7] == 0  # the far corner is not
    assert 0.05 < float(masks.mean()) < 0.5
    assert object_masks(tmp_path, data.names, 8) is None  # no metadata.jsonl: no masks
    (tmp_path / "metadata.jsonl").write_text('{"file": "00000.png"}\n', encoding="utf-8")
    with pytest.raises(BrushworkError, match="line 1"):
        object_masks(tmp_path, data.names, 8)  # a broken record is a clear error, not a KeyError


def _trainer(folder: Path, **overrides) -> DiffusionTrainer:
    settings = resolve("toy", batch_size=8, caption_dropout=0.0, **overrides)
    components = build_components(TOY_SPEC, seed=settings.seed)
    data = load_folder(folder)
    mean = encode_dataset(components.vae, data.images)
    latents = LatentSet(mean, tokenize(components.tokenizers[0], data.captions), latent_scale(mean))
    layout = LayoutTargets(position_labels(data.captions), object_masks(folder, data.names, mean.shape[-1]))
    return DiffusionTrainer(components.unet, components.text_encoders[0], latents,
                            tokenize(components.tokenizers[0], [""]), components.scheduler_config, settings, layout)


def test_layout_share_draws_positioned_captions_at_high_noise(drawn) -> None:
    folder, _ = drawn
    plain = _trainer(folder, layout_fraction=0.0).batch(0)
    batch = _trainer(folder, layout_fraction=0.5).batch(0)
    assert (batch["positions"][:4] != NO_POSITION).all()
    assert (batch["timesteps"][:4] >= 500).all()
    # The rest of the batch is untouched: the same pictures, noise and timesteps as without the share.
    assert torch.equal(batch["noisy"][4:], plain["noisy"][4:])
    assert torch.equal(batch["timesteps"][4:], plain["timesteps"][4:])


def test_foreground_weight_raises_the_loss_on_object_pixels(drawn) -> None:
    folder, _ = drawn
    trainer = _trainer(folder, foreground_weight=5.0, layout_fraction=0.0)
    weights = trainer.batch(0)["pixel_weights"]
    assert set(weights.unique().tolist()) == {1.0, 6.0}
    assert "pixel_weights" not in _trainer(folder, foreground_weight=0.0).batch(0)


def test_the_position_probe_pulls_position_words_apart() -> None:
    torch.manual_seed(0)
    components = build_components(TOY_SPEC)
    encoder, tokenizer = build_text_encoder(TOY_SPEC), components.tokenizers[0]
    captions = [f"a red circle {phrase}" for phrase in
                ("in the top left corner", "in the bottom right corner", "on the left", "on the right", "")]
    ids, labels = tokenize(tokenizer, captions).long(), position_labels(captions)
    probe = PositionProbe(encoder.config.hidden_size, torch.Generator().manual_seed(0))

    def spread() -> float:  # how far apart the last token's states are for "top left" and "bottom right"
        with torch.no_grad():
            last = encoder(ids[:2]).last_hidden_state[:, -1]
        return float((last[0] - last[1]).norm() / last[0].norm())

    before, losses = spread(), []
    optimizer = torch.optim.AdamW([*encoder.parameters(), *probe.parameters()], lr=3e-3)
    for _ in range(40):
        loss = probe.loss(encoder(ids).last_hidden_state, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert spread() > 3 * before


@pytest.mark.parametrize("flag, value", [("--layout-fraction", "1.5"), ("--foreground-weight", "-1"),
                                         ("--position-loss", "-0.1")])
def test_bad_layout_flags_are_one_line_errors(tmp_path: Path, flag: str, value: str, capsys) -> None:
    make_dataset(tmp_path / "data", 2, seed=0, size=32)
    argv = ["train", "base", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "m.safetensors"), "--preset", "toy",
            "--no-progress", flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and flag[2:].split("-")[0] in err


def test_layout_flags_reach_the_run_settings(drawn, tmp_path: Path) -> None:
    folder, _ = drawn
    output = tmp_path / "m.safetensors"
    argv = ["train", "base", "--data", str(folder), "-o", str(output), "--preset", "toy", "--no-progress",
            "--steps", "2", "--layout-fraction", "0.25", "--foreground-weight", "0", "--position-loss", "0.1"]
    assert main(argv) == 0
    settings = json.loads(output.with_suffix(".json").read_text())["settings"]
    assert (settings["layout_fraction"], settings["foreground_weight"], settings["position_loss_weight"]) == (0.25, 0.0, 0.1)
