"""Curation's aesthetic filter: LAION's improved aesthetic predictor (its MLP over CLIP image embeddings), found in
the models folder's aesthetic/. Tested on a tiny CLIP and an MLP in LAION's key layout: the scores are the
reference computation's, pictures under the threshold are left out with their score, a pickled MLP needs
--allow-pickle, and without the predictor the report says the filter is off."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from brushwork.cli import main
from brushwork.train.aesthetic import AestheticScorer
from brushwork.shapes import make_dataset

WIDTH = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("aesthetic") / "models" / "aesthetic"
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=WIDTH)
    CLIPVisionModelWithProjection(config).save_pretrained(root / "clip-vit-large-patch14")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "clip-vit-large-patch14")
    layers = torch.nn.Sequential(torch.nn.Linear(WIDTH, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                                 torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                                 torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))
    with torch.no_grad():  # a random MLP scores every picture alike: spread its scores over a few points
        layers[7].weight.mul_(2000.0)
    state = {f"layers.{key}": value for key, value in layers.state_dict().items()}
    save_file(state, str(root / "sac+logos+ava1-l14-linearMSE.safetensors"))
    return root.parent, layers.eval()


def reference_scores(models_dir, layers, pictures):
    folder = models_dir / "aesthetic" / "clip-vit-large-patch14"
    clip = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    pixels = CLIPImageProcessor.from_pretrained(folder)(images=pictures, return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = clip(pixel_values=pixels).image_embeds
        return layers(embeds / embeds.norm(dim=-1, keepdim=True)).flatten().tolist()


def test_scores_are_the_predictors(models, tmp_path):
    models_dir, layers = models
    make_dataset(tmp_path / "pictures", 6, seed=3, size=64, split="all")
    pictures = [Image.open(p).convert("RGB") for p in sorted((tmp_path / "pictures").glob("*.png"))]
    scorer = AestheticScorer.find(models_dir)
    assert scorer.score(pictures) == pytest.approx(reference_scores(models_dir, layers, pictures), abs=1e-5)


def test_data_check_leaves_out_low_scores_with_their_score(models, tmp_path, capsys):
    models_dir, layers = models
    data = tmp_path / "pictures"
    make_dataset(data, 6, seed=3, size=64, split="all")
    paths = sorted(data.glob("*.png"))
    scores = reference_scores(models_dir, layers, [Image.open(p).convert("RGB") for p in paths])
    threshold = (sorted(scores)[2] + sorted(scores)[3]) / 2  # three pictures score below it
    report_path = tmp_path / "report.json"
    assert main(["data", "check", str(data), "--resolution", "64", "--models-dir", str(models_dir),
                 "--min-aesthetic", repr(threshold), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    low = {p.name for p, s in zip(paths, scores) if s < threshold}
    assert {item["path"] for item in report["dropped"]} == low and len(low) == 3
    assert all("low aesthetic score" in item["reasons"][0] for item in report["dropped"])
    assert any("aesthetic filter is on" in note for note in report["notes"])


def test_a_pickled_mlp_needs_allow_pickle_and_no_predictor_means_off(models, tmp_path, capsys):
    models_dir, layers = models
    pickled = tmp_path / "models"
    (pickled / "aesthetic").mkdir(parents=True)
    (pickled / "aesthetic" / "clip").symlink_to(models_dir / "aesthetic" / "clip-vit-large-patch14")
    torch.save({f"layers.{k}": v for k, v in layers.state_dict().items()}, pickled / "aesthetic" / "mlp.pth")
    data = tmp_path / "pictures"
    make_dataset(data, 2, seed=3, size=64, split="all")
    assert main(["data", "check", str(data), "--resolution", "64", "--models-dir", str(pickled)]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["data", "check", str(data), "--resolution", "64", "--models-dir", str(pickled), "--allow-pickle",
                 "--min-aesthetic", "0"]) == 0
    assert "aesthetic filter is on: mlp.pth" in capsys.readouterr().out
    assert main(["data", "check", str(data), "--resolution", "64"]) == 0
    assert "aesthetic filter is off" in capsys.readouterr().out
