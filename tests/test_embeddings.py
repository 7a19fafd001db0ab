"""Textual inversion: an embedding's file name in a prompt puts its vectors there.

Reference: diffusers' `load_textual_inversion` on the same tiny model and file, whose prompt encoding must
equal ours (the name is replaced by as many new tokens as the file has vectors, in the same places)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from brushwork.engine.conditioning import PromptEncoder
from brushwork.engine.embeddings import EmbeddingLibrary, EmbeddingMatcher, load_embedding
from brushwork.engine.engine import Engine
from brushwork.errors import ModelLoadError, RecipeError
from brushwork.models.store import ModelStore
from brushwork.prompts import EMBEDDING_PLACEHOLDER, build_chunks
from brushwork.recipe import Recipe
from test_api import make_client
from tiny_models import CLIP_L_WIDTH, OPEN_CLIP_WIDTH, tiny_components, to_pipeline, write_tiny_checkpoint


def vectors(count: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


def encoder_with(components, tmp_path, files: dict[str, dict[str, torch.Tensor]]) -> PromptEncoder:
    folder = tmp_path / "embeddings"
    folder.mkdir(exist_ok=True)
    for name, tensors in files.items():
        save_file(tensors, folder / f"{name}.safetensors")
    library = EmbeddingLibrary(lambda: sorted(folder.iterdir()))
    widths = [encoder.config.hidden_size for encoder in components.text_encoders]
    return PromptEncoder(components, 1, torch.device("cpu"), torch.float32, embeddings=library.for_model(widths))


def test_encoding_equals_diffusers_load_textual_inversion(tmp_path):
    components = tiny_components("sd1")
    learnt = vectors(3, CLIP_L_WIDTH, 1)
    encoder = ours = encoder_with(components, tmp_path, {"inkstyle": {"emb_params": learnt}})
    prompt = "a red circle, (inkstyle:1.0) on a blue background"
    positive, _ = ours.encode_pair(prompt, "", 10)

    pipeline = to_pipeline(tiny_components("sd1"))
    pipeline.load_textual_inversion(str(tmp_path / "embeddings" / "inkstyle.safetensors"), token="inkstyle")
    reference, _ = pipeline.encode_prompt(prompt.replace("(inkstyle:1.0)", "inkstyle"), "cpu", 1, False)
    assert torch.allclose(positive.at(1).context, reference, atol=1e-5), (positive.at(1).context - reference).abs().max()
    plain, _ = encoder.encode_pair("a red circle, on a blue background", "", 10)
    assert not torch.allclose(positive.at(1).context, plain.at(1).context, atol=1e-2)
    layer = components.text_encoders[0].embeddings.token_embedding
    assert not layer._forward_hooks  # the hook lived for one call only


def test_chunks_keep_room_for_every_vector_and_never_split_one():
    ids = {"alpha": [10], "beta": [11], "inky": [20, 21]}  # "inky" is two tokens, standing for 4 vectors

    def tokenize(pieces):
        return [[token for word in piece.split() for token in ids.get(word, [99])] for piece in pieces]

    class Four:
        count = 4

    matcher = EmbeddingMatcher({"inky": Four()}, tokenize)
    chunks = build_chunks("alpha (inky:1.5) beta", tokenize, bos_id=1, eos_id=2, pad_id=2, comma_id=None,
                          chunk_length=8, find_embedding=matcher)
    assert chunks[0].tokens[:8] == [1, 10, *[EMBEDDING_PLACEHOLDER] * 4, 11, 2]
    assert chunks[0].weights[2:6] == [1.5] * 4 and chunks[0].fixes == [(2, "inky")]
    crowded = build_chunks("alpha " * 6 + "inky", tokenize, bos_id=1, eos_id=2, pad_id=2, comma_id=None,
                           chunk_length=8, find_embedding=matcher)
    assert [chunk.fixes for chunk in crowded] == [[], [(1, "inky")]]  # 6 + 4 > 8: it starts the next chunk
    # A full chunk with a recent comma: the words after it move on with the embedding (A1111 cuts first).
    ids[","] = [5]
    comma = build_chunks("alpha alpha alpha alpha , beta beta beta inky", tokenize, bos_id=1, eos_id=2, pad_id=2,
                         comma_id=5, chunk_length=8, comma_backtrack=4, find_embedding=matcher)
    assert comma[0].tokens[1:7] == [10, 10, 10, 10, 5, 2] and comma[0].fixes == []
    assert comma[1].tokens[1:8] == [11, 11, 11, *[EMBEDDING_PLACEHOLDER] * 4] and comma[1].fixes == [(4, "inky")]

    class Huge:
        count = 9

    with pytest.raises(RecipeError, match="embedding 'inky' has 9 vectors, more than the 8"):
        build_chunks("inky", tokenize, bos_id=1, eos_id=2, pad_id=2, comma_id=None, chunk_length=8,
                     find_embedding=EmbeddingMatcher({"inky": Huge()}, tokenize))


def test_sdxl_embedding_fills_both_encoders(tmp_path):
    components = tiny_components("sdxl")
    clip_l, clip_g = vectors(2, CLIP_L_WIDTH, 2), vectors(2, OPEN_CLIP_WIDTH, 3)
    encoder = encoder_with(components, tmp_path, {"xlstyle": {"clip_l": clip_l, "clip_g": clip_g},
                                                  "sd1style": {"emb_params": vectors(2, CLIP_L_WIDTH, 4)}})
    assert set(encoder.embeddings) == {"xlstyle"}  # an SD 1.x embedding does not fit SDXL
    seen, handles = [], []
    for text_encoder in components.text_encoders:
        embeddings = getattr(text_encoder, "text_model", text_encoder).embeddings  # token + position embeddings

        def record(module, inputs, output, positions=embeddings.position_embedding.weight):
            seen.append((output[0, 1:3] - positions[1:3]).detach().clone())

        handles.append(embeddings.register_forward_hook(record))
    encoder.encode_pair("xlstyle", "", 10)  # "xlstyle" first, through each encoder in turn
    for handle in handles:
        handle.remove()
    assert torch.allclose(seen[0], clip_l, atol=1e-6) and torch.allclose(seen[1], clip_g, atol=1e-6)


def test_files_as_people_share_them(tmp_path):
    learnt = vectors(2, 32, 5)
    torch.save({"string_to_param": {"*": learnt}, "name": "old", "step": 3000}, tmp_path / "a1111.pt")
    torch.save({"<concept>": learnt[0]}, tmp_path / "learned_embeds.bin")
    assert torch.equal(load_embedding(tmp_path / "a1111.pt", allow_pickle=True).vectors[0], learnt)
    assert load_embedding(tmp_path / "learned_embeds.bin", allow_pickle=True).count == 1
    with pytest.raises(ModelLoadError, match="allow-pickle"):
        load_embedding(tmp_path / "a1111.pt", allow_pickle=False)
    save_file({"lora_unet_x.alpha": torch.tensor(1.0), "other": torch.ones(2)}, tmp_path / "lora.safetensors")
    with pytest.raises(ModelLoadError, match="not a textual inversion"):
        load_embedding(tmp_path / "lora.safetensors", allow_pickle=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ti-models")
    (root / "Stable-diffusion").mkdir()
    write_tiny_checkpoint("sd1", root / "Stable-diffusion" / "tiny.safetensors")
    (root / "embeddings").mkdir()
    save_file({"emb_params": vectors(2, CLIP_L_WIDTH, 6) * 3}, root / "embeddings" / "inkstyle.safetensors")
    save_file({"clip_l": vectors(1, CLIP_L_WIDTH, 7), "clip_g": vectors(1, OPEN_CLIP_WIDTH, 8)},
              root / "embeddings" / "xl-only.safetensors")
    return root


def test_engine_applies_it_and_writes_ti_hashes(models):
    engine = Engine(ModelStore(models))
    base = dict(steps=2, width=32, height=32, seed=4, model="tiny", sampler="Euler")
    plain = engine.run(Recipe(prompt="a circle", **base)).images[0]
    used = engine.run(Recipe(prompt="a circle inkstyle", negative_prompt="blurry", **base)).images[0]
    assert np.abs(np.asarray(plain.image, int) - np.asarray(used.image, int)).max() > 5
    digest = engine.store.hashes.sha256(models / "embeddings" / "inkstyle.safetensors")[:12]
    assert f'TI hashes: "inkstyle: {digest}"' in used.infotext
    assert "TI hashes" not in plain.infotext
    again = engine.run(Recipe(prompt="a circle inkstyle", negative_prompt="blurry", **base)).images[0]
    assert again.image.tobytes() == used.image.tobytes()


def test_sdapi_lists_loaded_and_skipped(models, tmp_path):
    with make_client(models, tmp_path / "data") as client:
        made = client.post("/sdapi/v1/txt2img", json={"prompt": "inkstyle", "steps": 2, "width": 32, "height": 32})
        assert made.status_code == 200, made.text
        listing = client.get("/sdapi/v1/embeddings").json()
    assert listing["loaded"] == {"inkstyle": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                              "shape": CLIP_L_WIDTH, "vectors": 2}}
    assert set(listing["skipped"]) == {"xl-only"}  # made for SDXL: not for the SD 1.x model in memory
