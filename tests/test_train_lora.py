"""`brushwork train lora` on a tiny SD 1.x model and a few drawn pictures: the file is kohya-layout with ss_*
metadata, brushwork and diffusers' `load_lora_weights` both load it and it changes the picture; a run stopped and
resumed ends with the same weights as an uninterrupted one; the curation report is saved beside it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from brushwork.cli import main
from brushwork.errors import ModelLoadError
from brushwork.engine.engine import Engine
from brushwork.models.patches.lora import LoraPatch, load_lora
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe
from brushwork.shapes import make_dataset
from brushwork.train.jobs import TrainRequest
from tiny_models import tiny_components, to_pipeline, write_tiny_checkpoint

FLAGS = ["--resolution", "64", "--rank", "4", "--alpha", "4", "--lr", "1e-3", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-lora")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint("sd1", models / "Stable-diffusion" / "tiny.safetensors")
    make_dataset(root / "hearts", 4, seed=5, size=64, split="all")
    return root, models


def train(setup, output, *extra) -> int:
    root, models = setup
    return main(["train", "lora", str(root / "hearts"), "--base", "tiny", "--models-dir", str(models),
                 "-o", str(output), *FLAGS, *extra])


def test_the_lora_loads_everywhere_and_changes_the_picture(setup, tmp_path):
    root, models = setup
    output = tmp_path / "Lora" / "hearts.safetensors"
    assert train(setup, output, "--steps", "6", "--train-text-encoder") == 0
    state = load_file(output)
    assert any(key.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.") for key in state)
    assert any(key.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for key in state)
    metadata = safe_open(str(output), "pt").metadata()
    assert metadata["ss_network_dim"] == "4" and metadata["ss_base_model_version"] == "sd_v1"
    assert json.loads(metadata["ss_tag_frequency"])  # A1111's card shows the caption tags
    assert json.loads(output.with_suffix(".curation.json").read_text())["kept"]

    components = tiny_components("sd1")
    lora = load_lora(output, components)
    assert len(lora.layers) == len(state) // 3
    pipeline = to_pipeline(tiny_components("sd1"))
    pipeline.load_lora_weights(str(output))  # diffusers + peft read the kohya file too
    pipeline.fuse_lora(lora_scale=1.0)
    with components.patcher.applied([LoraPatch(lora, 1.0, 1.0)]):
        ours = components.unet.state_dict()
        theirs = pipeline.unet.state_dict()
        assert all(torch.allclose(ours[key], theirs[key], atol=1e-6) for key in ours if key in theirs)

    (models / "Lora").mkdir(exist_ok=True)
    (models / "Lora" / "hearts.safetensors").write_bytes(output.read_bytes())
    engine = Engine(ModelStore(models))
    base = dict(prompt="a red circle", steps=2, width=64, height=64, seed=3, model="tiny", sampler="Euler")
    plain = engine.run(Recipe(**base)).images[0].image
    tagged = engine.run(Recipe(**base | {"prompt": "a red circle <lora:hearts:1>"})).images[0].image
    assert not np.array_equal(np.asarray(plain), np.asarray(tagged))


def test_a_stopped_run_resumes_to_the_same_weights(setup, tmp_path, monkeypatch):
    whole = tmp_path / "whole.safetensors"
    assert train(setup, whole, "--steps", "6", "--checkpoint-every", "2") == 0

    import brushwork.train.lora as trainer

    real = trainer.train_lora
    calls = []

    def stop_after_three(*args, **kwargs):
        done = []
        kwargs["on_step"] = lambda stage, step, loss: done.append(step)
        kwargs["should_stop"] = lambda: len(done) >= 3 and not calls
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_lora", stop_after_three)
    parts = tmp_path / "parts.safetensors"
    assert train(setup, parts, "--steps", "6", "--checkpoint-every", "2") == 130  # stopped, state saved
    assert not parts.exists()
    calls.append("resumed")
    assert train(setup, parts, "--steps", "6", "--checkpoint-every", "2", "--resume") == 0
    first, second = load_file(whole), load_file(parts)
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
    assert train(setup, parts, "--steps", "7", "--resume") == 2  # other settings: refused


def test_bad_requests_are_clear(setup, tmp_path, capsys):
    root, models = setup
    assert main(["train", "lora", str(tmp_path / "nothing"), "--base", "tiny", "--models-dir", str(models),
                 "-o", str(tmp_path / "x.safetensors"), *FLAGS]) == 2
    assert "training data folder not found" in capsys.readouterr().err
    assert train(setup, tmp_path / "x.ckpt") == 2
    assert "write a .safetensors file" in capsys.readouterr().err


def test_tag_shuffling_keeps_the_leading_tags_and_is_fixed_by_the_seed():
    from brushwork.train.finetune import shuffled_tags

    caption = "sks dog, on grass, sunny, photo, dslr"
    orders = {shuffled_tags(caption, 1, torch.Generator().manual_seed(seed)) for seed in range(20)}
    assert all(order.startswith("sks dog, ") for order in orders) and len(orders) > 5
    assert all(sorted(order.split(", ")) == sorted(caption.split(", ")) for order in orders)
    again = shuffled_tags(caption, 1, torch.Generator().manual_seed(3))
    assert again == shuffled_tags(caption, 1, torch.Generator().manual_seed(3))


def test_shuffled_training_runs(setup, tmp_path):
    assert train(setup, tmp_path / "shuffled.safetensors", "--steps", "2", "--shuffle-tags", "--keep-tokens", "1") == 0


def test_sample_pictures_every_n_steps(setup, tmp_path):
    output = tmp_path / "sampled.safetensors"
    assert train(setup, output, "--steps", "4", "--sample-every", "2", "--sample-prompt", "a red circle") == 0
    samples = sorted(p.name for p in (tmp_path / "sampled.train" / "samples").iterdir())
    assert samples == ["step-000002.png", "step-000004.png"]


def test_an_sdxl_lora_trains_both_text_encoders_and_loads_everywhere(setup, tmp_path):
    """SDXL: the U-Net also reads the pooled text and the size ids; kohya names the encoders lora_te1_/te2_."""
    root, models = setup
    write_tiny_checkpoint("sdxl", models / "Stable-diffusion" / "xl.safetensors")
    output = tmp_path / "xl-lora.safetensors"
    assert main(["train", "lora", str(root / "hearts"), "--base", "xl", "--models-dir", str(models), "-o", str(output),
                 *FLAGS, "--steps", "3", "--train-text-encoder"]) == 0
    state = load_file(output)
    assert {key.split("_")[1] for key in state} == {"unet", "te1", "te2"}
    assert safe_open(str(output), "pt").metadata()["ss_base_model_version"] == "sdxl_base_v1-0"

    components = tiny_components("sdxl")
    lora = load_lora(output, components)
    assert len(lora.layers) == len(state) // 3
    pipeline = to_pipeline(tiny_components("sdxl"))
    pipeline.load_lora_weights(str(output))
    pipeline.fuse_lora(lora_scale=1.0)
    with components.patcher.applied([LoraPatch(lora, 1.0, 1.0)]):
        ours, theirs = components.unet.state_dict(), pipeline.unet.state_dict()
        assert all(torch.allclose(ours[key], theirs[key], atol=1e-6) for key in ours if key in theirs)
        ours = components.text_encoders[1].state_dict()
        theirs = pipeline.text_encoder_2.state_dict()
        assert all(torch.allclose(ours[key], theirs[key], atol=1e-6) for key in ours if key in theirs)


def test_a_locon_lora_adapts_the_resnet_convolutions_too(setup, tmp_path):
    output = tmp_path / "locon.safetensors"
    assert train(setup, output, "--steps", "2", "--conv-rank", "2", "--conv-alpha", "1") == 0
    state = load_file(output)
    down = state["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"]
    assert down.shape[0] == 2 and down.shape[2:] == (3, 3)  # kohya's LoCon layout: [rank, in, kh, kw]
    assert float(state["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]) == 1.0
    assert float(state["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"]) == 4.0
    assert json.loads(safe_open(str(output), "pt").metadata()["ss_network_args"])["conv_dim"] == "2"
    components = tiny_components("sd1")
    pipeline = to_pipeline(tiny_components("sd1"))
    pipeline.load_lora_weights(str(output))
    pipeline.fuse_lora(lora_scale=1.0)
    with components.patcher.applied([LoraPatch(load_lora(output, components), 1.0, 1.0)]):
        ours, theirs = components.unet.state_dict(), pipeline.unet.state_dict()
        conv = "down_blocks.0.resnets.0.conv1.weight"
        assert not torch.equal(ours[conv], tiny_components("sd1").unet.state_dict()[conv])
        assert all(torch.allclose(ours[key], theirs[key], atol=1e-6) for key in ours if key in theirs)


def test_new_words_learn_with_the_lora_and_come_with_its_file(setup, tmp_path):
    """Pivotal tuning: the captions' unknown word gets vectors of its own, trained with the adapters from its
    init word's, saved as A1111's bundled embedding; a job with the LoRA puts them where the word is."""
    root, models = setup
    data = tmp_path / "words"
    make_dataset(data, 4, seed=5, size=64, split="all")
    for caption in data.glob("*.txt"):
        caption.write_text(caption.read_text() + ", glorp", encoding="utf-8")
    output = tmp_path / "glorp.safetensors"
    flags = ["train", "lora", str(data), "--base", "tiny", "--models-dir", str(models), *FLAGS,
             "--steps", "4", "--checkpoint-every", "2", "--new-word", "glorp=circle"]
    assert main([*flags, "-o", str(output)]) == 0
    state = load_file(output)
    vectors = state["bundle_emb.glorp.string_to_param.*"]
    components = tiny_components("sd1")
    table = components.text_encoders[0].get_input_embeddings().weight
    circle = table[components.tokenizers[0]("circle", add_special_tokens=False).input_ids].detach()
    pieces = len(components.tokenizers[0]("glorp", add_special_tokens=False).input_ids)  # a word of 3 tokens
    assert vectors.shape == (pieces, table.shape[1]) and not torch.allclose(vectors, circle.expand_as(vectors))
    lora = load_lora(output, components)
    assert [embedding.name for embedding in lora.embeddings] == ["glorp"]

    (models / "Lora").mkdir(exist_ok=True)
    (models / "Lora" / "glorp.safetensors").write_bytes(output.read_bytes())
    without = {key: value for key, value in state.items() if not key.startswith("bundle_emb.")}
    save_file(without, str(models / "Lora" / "plain.safetensors"))
    engine = Engine(ModelStore(models))
    base = dict(steps=2, width=64, height=64, seed=3, model="tiny", sampler="Euler")

    def paint(prompt: str) -> np.ndarray:
        return np.asarray(engine.run(Recipe(prompt=prompt, **base)).images[0].image)

    assert not np.array_equal(paint("a glorp <lora:glorp:1>"), paint("a glorp <lora:plain:1>"))
    assert np.array_equal(paint("a red circle <lora:glorp:1>"), paint("a red circle <lora:plain:1>"))

    import brushwork.train.lora as trainer  # stopped after 2 steps and resumed: the same vectors at the end

    parts = tmp_path / "parts.safetensors"
    stop = {"now": True}
    real = trainer.train_lora

    def stopping(*args, **kwargs):
        done = []
        kwargs["on_step"] = lambda stage, step, loss: done.append(step)
        kwargs["should_stop"] = lambda: stop["now"] and len(done) >= 2
        return real(*args, **kwargs)

    trainer.train_lora = stopping
    try:
        assert main([*flags, "-o", str(parts)]) == 130
        stop["now"] = False
        assert main([*flags, "-o", str(parts), "--resume"]) == 0
    finally:
        trainer.train_lora = real
    assert torch.equal(load_file(parts)["bundle_emb.glorp.string_to_param.*"], vectors)


def test_word_lr_sets_the_new_words_own_learning_rate(setup, tmp_path):
    root, models = setup
    data = tmp_path / "words"
    make_dataset(data, 4, seed=5, size=64, split="all")
    for caption in data.glob("*.txt"):
        caption.write_text(caption.read_text() + ", glorp", encoding="utf-8")
    components = tiny_components("sd1")
    circle = components.text_encoders[0].get_input_embeddings().weight[
        components.tokenizers[0]("circle", add_special_tokens=False).input_ids].detach()

    def moved(word_lr: str) -> float:
        output = tmp_path / f"glorp-{word_lr}.safetensors"
        assert main(["train", "lora", str(data), "--base", "tiny", "--models-dir", str(models), *FLAGS, "--steps", "3",
                     "--new-word", "glorp=circle", "--word-lr", word_lr, "-o", str(output)]) == 0
        state = load_file(output)
        assert any(key.endswith("lora_up.weight") and value.abs().max() > 0 for key, value in state.items())
        return float((state["bundle_emb.glorp.string_to_param.*"] - circle.mean(0)).abs().max())

    assert moved("1e-12") < 1e-6  # the adapters learn, the words stay at their init word's vectors
    assert moved("1e-1") > 10 * moved("1e-3") > 0


def test_new_words_are_checked(setup, tmp_path, capsys):
    root, models = setup
    flags = ["train", "lora", str(root / "hearts"), "--base", "tiny", "--models-dir", str(models), *FLAGS]
    assert main([*flags, "-o", str(tmp_path / "x.safetensors"), "--new-word", "../x"]) == 2
    assert "new word '../x' (new_words, --new-word)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="train with a LoRA only"):
        TrainRequest(kind="embedding", output="e", token="t", init_word="red", new_words=["glorp"])
    output = tmp_path / "y.safetensors"
    assert main([*flags, "-o", str(output), "--steps", "1", "--new-word", "glorp"]) == 0
    state = load_file(output)
    state["bundle_emb.glorp.string_to_param.*"] = torch.zeros(1, 7)  # made for a text encoder 7 wide
    save_file(state, str(output))
    with pytest.raises(ModelLoadError, match="bundled embedding 'glorp' was made for other text encoders"):
        load_lora(output, tiny_components("sd1"))
