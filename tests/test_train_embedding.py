"""`brushwork train embedding`: textual inversion on tiny SD 1.x and SDXL models. The file is A1111's emb_params
layout (SDXL: clip_l + clip_g), the engine uses it by file name and it changes the picture, diffusers'
`load_textual_inversion` reads the SDXL file into both text encoders, the vectors start as the init word's in
each encoder, the model's weights are untouched, and a stopped run resumes to the same vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from brushwork.cli import main
from brushwork.engine.embeddings import SDXL_KEYS, load_embedding
from brushwork.engine.engine import Engine
from brushwork.errors import BrushworkError
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe
from brushwork.shapes import make_dataset
from brushwork.train.finetune import NewWord
from tiny_loras import weights
from tiny_models import CLIP_L_WIDTH, OPEN_CLIP_WIDTH, tiny_components, to_pipeline, write_tiny_checkpoint

FLAGS = ["--token", "hexshape", "--init-word", "star", "--vectors", "2", "--resolution", "64", "--lr", "5e-2",
         "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-embedding")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint("sd1", models / "Stable-diffusion" / "tiny.safetensors")
    write_tiny_checkpoint("sdxl", models / "Stable-diffusion" / "xl.safetensors")
    make_dataset(root / "hexes", 4, seed=8, size=64, split="all")
    return root, models


def train(setup, output, *extra, base: str = "tiny") -> int:
    root, models = setup
    return main(["train", "embedding", str(root / "hexes"), "--base", base, "--models-dir", str(models),
                 "-o", str(output), *FLAGS, *extra])


def vectors_of(path) -> tuple[torch.Tensor, ...]:
    """The file's vectors per text encoder, in the components' order (SD 1.x: one, SDXL: CLIP-L then G)."""
    state = load_file(path)
    return tuple(state[key] for key in SDXL_KEYS) if SDXL_KEYS[0] in state else (state["emb_params"],)


def starts(components) -> list[torch.Tensor]:
    """Where the vectors of a run with FLAGS start in each text encoder: the init word's one token, twice."""
    rows = []
    for tokenizer, encoder in zip(components.tokenizers, components.text_encoders):
        star = encoder.get_input_embeddings().weight[tokenizer("star", add_special_tokens=False).input_ids].detach()
        assert star.shape[0] == 1
        rows.append(star.expand(2, -1))
    return rows


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


@pytest.mark.parametrize("base", ["tiny", "xl"])
def test_a_stopped_run_resumes_to_the_same_vectors(setup, tmp_path, monkeypatch, base):
    whole = tmp_path / "whole.safetensors"
    assert train(setup, whole, "--steps", "6", "--checkpoint-every", "2", base=base) == 0
    import brushwork.train.embedding as trainer

    real, resumed = trainer.train_embedding, []

    def stop_after_three(*args, **kwargs):
        done = []
        kwargs["on_step"] = lambda stage, step, loss: done.append(step)
        kwargs["should_stop"] = lambda: len(done) >= 3 and not resumed
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_embedding", stop_after_three)
    parts = tmp_path / "parts.safetensors"
    assert train(setup, parts, "--steps", "6", "--checkpoint-every", "2", base=base) == 130
    resumed.append(True)
    assert train(setup, parts, "--steps", "6", "--checkpoint-every", "2", "--resume", base=base) == 0
    whole_vectors, parts_vectors = vectors_of(whole), vectors_of(parts)
    assert len(whole_vectors) == (2 if base == "xl" else 1)
    assert all(torch.equal(a, b) for a, b in zip(whole_vectors, parts_vectors))


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


def test_an_sdxl_embedding_has_vectors_for_both_encoders_and_loads_everywhere(setup, tmp_path):
    """SDXL: clip_l and clip_g, as A1111/ComfyUI keep them; the Engine paints the token with them, and diffusers'
    convention (clip_l into text_encoder/tokenizer, clip_g into text_encoder_2/tokenizer_2) puts the trained
    vectors in the new token's rows of each encoder."""
    root, models = setup
    output = tmp_path / "embeddings" / "hexshape.safetensors"
    assert train(setup, output, "--steps", "3", base="xl") == 0
    state = load_file(output)
    assert set(state) == set(SDXL_KEYS)
    assert state["clip_l"].shape == (2, CLIP_L_WIDTH) and state["clip_g"].shape == (2, OPEN_CLIP_WIDTH)
    assert load_embedding(output, allow_pickle=False).fits([CLIP_L_WIDTH, OPEN_CLIP_WIDTH])
    trained = [state[key] for key in SDXL_KEYS]
    assert not any(torch.allclose(learnt, start) for learnt, start in zip(trained, starts(tiny_components("sdxl"))))

    folder = tmp_path / "models"
    (folder / "Stable-diffusion").mkdir(parents=True)
    (folder / "Stable-diffusion" / "xl.safetensors").write_bytes(
        (models / "Stable-diffusion" / "xl.safetensors").read_bytes())
    recipe = Recipe(prompt="a red hexshape", steps=2, width=64, height=64, seed=3, model="xl", sampler="Euler")
    plain = Engine(ModelStore(folder)).run(recipe).images[0]
    (folder / "embeddings").mkdir()
    (folder / "embeddings" / "hexshape.safetensors").write_bytes(output.read_bytes())
    used = Engine(ModelStore(folder)).run(recipe).images[0]
    assert 'TI hashes: "hexshape: ' in used.infotext and "TI hashes" not in plain.infotext
    assert not np.array_equal(np.asarray(plain.image), np.asarray(used.image))

    pipeline = to_pipeline(tiny_components("sdxl"))
    for key, encoder, tokenizer in (("clip_l", pipeline.text_encoder, pipeline.tokenizer),
                                    ("clip_g", pipeline.text_encoder_2, pipeline.tokenizer_2)):
        pipeline.load_textual_inversion(state[key], token="hexshape", text_encoder=encoder, tokenizer=tokenizer)
        prompt = pipeline.maybe_convert_prompt("a red hexshape", tokenizer)  # one added token per vector
        ids = tokenizer(prompt, add_special_tokens=False).input_ids[-2:]
        assert ids == tokenizer.convert_tokens_to_ids(["hexshape", "hexshape_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids].detach(), state[key])


def test_the_vectors_start_as_the_init_words_in_each_text_encoder(setup, tmp_path):
    """A learning rate too small to move them leaves the file at the start: in each encoder the init word's
    token embedding, once per vector (an init word of as many tokens as vectors gives its tokens in order)."""
    output = tmp_path / "start.safetensors"
    assert train(setup, output, "--steps", "1", "--lr", "1e-12", base="xl") == 0
    components = tiny_components("sdxl")
    assert all(torch.allclose(learnt, start, atol=1e-6) for learnt, start in zip(vectors_of(output), starts(components)))

    word = NewWord.start(components, "hexshape", "red circle", 2)
    for vectors, tokenizer, encoder in zip(word.vectors, components.tokenizers, components.text_encoders):
        ids = tokenizer("red circle", add_special_tokens=False).input_ids
        assert torch.equal(vectors.detach(), encoder.get_input_embeddings().weight[ids].detach())
    with pytest.raises(BrushworkError, match="the word ' ' to start 'hexshape' from has no tokens"):
        NewWord.start(components, "hexshape", " ", 2)
