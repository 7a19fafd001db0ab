"""LoRA files as weight patches: what a patched model computes, and that every job leaves it bit-identical.

References: the textbook merge W + m·(up·down)·α/r computed in tests/tiny_loras.py without brushwork, and
diffusers' own `load_lora_weights` + `fuse_lora` (peft) on the same tiny model and file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from brushwork.engine.engine import Engine, groupable
from brushwork.errors import Cancelled, ModelLoadError
from brushwork.models.patches.lora import LoraPatch, load_lora
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe
from tiny_loras import kohya_file, lora_factors, manual_merge, weights
from tiny_models import tiny_components, to_pipeline, write_tiny_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder: a tiny SD 1.x checkpoint and two kohya LoRAs made for it (one in a LyCORIS subfolder)."""
    root = tmp_path_factory.mktemp("lora-models")
    (root / "Stable-diffusion").mkdir()
    components = write_tiny_checkpoint("sd1", root / "Stable-diffusion" / "tiny.safetensors")
    (root / "Lora").mkdir()
    save_file(kohya_file(components, lora_factors(rank=4, alpha=2.0), seed=1), root / "Lora" / "ink.safetensors")
    (root / "LyCORIS" / "styles").mkdir(parents=True)
    save_file(kohya_file(components, lora_factors(rank=2, alpha=None), seed=2, text_encoder=False),
              root / "LyCORIS" / "styles" / "paper.safetensors")
    return root


def recipe(**fields) -> Recipe:
    return Recipe(**{"prompt": "a red circle", "seed": 7, "steps": 3, "width": 32, "height": 32,
                     "model": "tiny", "sampler": "Euler"} | fields)


def assert_weights_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 0.0):
    assert actual.keys() == expected.keys()
    worst = max((actual[key] - expected[key]).abs().max().item() for key in actual)
    assert worst <= atol, worst


def test_kohya_lora_equals_the_textbook_merge_and_diffusers_fuse(tmp_path):
    components = tiny_components("sd1")
    state = kohya_file(components, lora_factors(rank=4, alpha=2.0), seed=3)
    path = tmp_path / "ink.safetensors"
    save_file(state, path)
    lora = load_lora(path, components)
    assert lora.kinds == {"LoRA"} and len(lora.layers) == len(state) // 3  # down, up, alpha per layer

    expected = manual_merge(components, state, 0.7)
    reference = to_pipeline(tiny_components("sd1"))
    reference.load_lora_weights(str(path))
    reference.fuse_lora(lora_scale=0.7)
    reference.unload_lora_weights()
    fused = {f"unet.{k}": v for k, v in reference.unet.state_dict().items()}
    fused |= {f"text_encoder.{k}": v for k, v in reference.text_encoder.state_dict().items()}

    with components.patcher.applied([LoraPatch(lora, 0.7, 0.7)]):
        patched = weights(components)
    for key, value in expected.items():  # the textbook merge, layer by layer
        name = key.replace("te.", "text_encoder.", 1) + ".weight"
        assert torch.allclose(patched[name], value, atol=1e-6, rtol=0), name
    assert_weights_equal(patched, fused)  # diffusers + peft: bit for bit


def test_multipliers_for_text_encoder_and_unet_apply_separately(tmp_path):
    components = tiny_components("sd1")
    save_file(kohya_file(components, lora_factors(), seed=4), tmp_path / "a.safetensors")
    lora, before = load_lora(tmp_path / "a.safetensors", components), weights(components)
    with components.patcher.applied([LoraPatch(lora, 0.5, 0.0)]):
        patched = weights(components)
    unet_changed = [k for k in before if k.startswith("unet.") and not torch.equal(before[k], patched[k])]
    te_changed = [k for k in before if k.startswith("text_encoder.") and not torch.equal(before[k], patched[k])]
    assert unet_changed == [] and len(te_changed) > 0


def test_two_stacked_loras_add_both_deltas(tmp_path):
    components = tiny_components("sd1")
    first, second = (kohya_file(components, lora_factors(rank=rank), seed=seed) for rank, seed in ((4, 5), (2, 6)))
    save_file(first, tmp_path / "first.safetensors")
    save_file(second, tmp_path / "second.safetensors")
    base = weights(components)
    loras = [load_lora(tmp_path / f"{name}.safetensors", components) for name in ("first", "second")]
    with components.patcher.applied([LoraPatch(loras[0], 0.8, 0.8), LoraPatch(loras[1], -0.4, -0.4)]):
        patched = weights(components)
    one, two = manual_merge(components, first, 0.8), manual_merge(components, second, -0.4)
    for key in one:
        name = key.replace("te.", "text_encoder.", 1) + ".weight"
        both = one[key] + two[key] - base[name]
        assert torch.allclose(patched[name], both, atol=1e-6, rtol=0), name
    assert_weights_equal(weights(components), base)  # restored exactly


def test_a_picture_with_a_lora_equals_one_from_the_merged_checkpoint(models):
    engine = Engine(ModelStore(models))
    with_lora = engine.run(recipe(prompt="a red circle <lora:ink:0.7>")).images[0]

    merged_engine = Engine(ModelStore(models))
    components = merged_engine.store.load("tiny").components
    from safetensors.torch import load_file

    merged = manual_merge(components, load_file(models / "Lora" / "ink.safetensors"), 0.7)
    with torch.no_grad():
        for key, value in merged.items():
            module, path = ("unet", key[5:]) if key.startswith("unet.") else ("text_encoder", key[3:])
            components.patcher.parameter(module, path + ".weight").copy_(value)
    by_hand = merged_engine.run(recipe()).images[0]
    difference = np.abs(np.asarray(with_lora.image, int) - np.asarray(by_hand.image, int))
    assert difference.max() <= 1  # float32 sums in another order: at most one 8-bit level
    plain = engine.run(recipe()).images[0]
    assert np.abs(np.asarray(plain.image, int) - np.asarray(with_lora.image, int)).max() > 10  # the LoRA shows


def test_every_job_leaves_the_model_bit_identical(models):
    engine = Engine(ModelStore(models))
    model = engine.store.load("tiny")
    fresh = weights(Engine(ModelStore(models)).store.load("tiny").components)
    engine.run(recipe(prompt="x <lora:ink:1.3> <lora:paper:-0.6>"))
    assert_weights_equal(weights(model.components), fresh)

    with pytest.raises(Cancelled):  # cancelled between two steps
        engine.run(recipe(prompt="x <lora:ink:0.9>"), should_stop=lambda: True)
    assert_weights_equal(weights(model.components), fresh)

    pictures = engine.generate(recipe(prompt="x <lora:ink:0.9>", batch_count=3))
    next(pictures)  # a caller that stops after the first picture
    pictures.close()
    assert_weights_equal(weights(model.components), fresh)


def test_a_failing_patch_restores_what_it_had_changed(models):
    components = tiny_components("sd1")
    lora = load_lora(models / "Lora" / "ink.safetensors", components)
    before = weights(components)

    class Broken:
        def changes(self):
            yield from lora.changes(1.0, 1.0)
            raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        with components.patcher.applied([Broken()]):
            pass
    assert_weights_equal(weights(components), before)


def test_lycoris_folder_and_subfolders_are_found(models):
    store = ModelStore(models)
    assert [entry.name for entry in store.entries("lora")] == ["ink.safetensors", "styles/paper.safetensors"]
    assert store.resolve("lora", "paper") == (models / "LyCORIS" / "styles" / "paper.safetensors").resolve()
    with pytest.raises(ModelLoadError, match=r"not in .*Lora or .*LyCORIS"):
        store.resolve("lora", "nothing")


def test_switching_loras_reads_no_checkpoint_again_and_each_file_once(models, monkeypatch):
    engine = Engine(ModelStore(models))
    engine.run(recipe())
    loads, reads = [], []
    monkeypatch.setattr(ModelStore, "_load_components", lambda self, path: loads.append(path))
    import brushwork.models.patches.lora as lora_module

    real = lora_module.load_lora
    monkeypatch.setattr(lora_module, "load_lora", lambda path, *a, **k: reads.append(path.name) or real(path, *a, **k))
    for prompt in ("<lora:ink:0.5>", "<lora:paper:1>", "<lora:ink:1> <lora:paper:0.3>", "plain", "<lora:ink:0.2>"):
        engine.run(recipe(prompt=prompt))
    assert loads == [] and sorted(reads) == ["ink.safetensors", "paper.safetensors"]


def test_groupable_only_with_the_same_loras_and_weights():
    keys = {groupable(recipe(prompt=prompt)) for prompt in
            ("a <lora:ink:0.5>", "b <lora:ink:0.5>", "c <lora:ink:0.6>", "d", "e <lora:ink:0.5:0.2>")}
    assert len(keys) == 4  # the first two group; weights or another multiplier split
    assert groupable(recipe(prompt="a <lora:ink:0.5>")) == groupable(recipe(prompt="a", loras=[{"name": "ink", "weight": 0.5}]))


def test_a_group_of_jobs_with_a_lora_matches_each_job_alone(models):
    engine = Engine(ModelStore(models))
    jobs = [recipe(prompt=f"{shape} <lora:ink:0.8>", seed=seed) for shape, seed in (("a circle", 1), ("a square", 2))]
    grouped = engine.generate_group(jobs)
    for job, result in zip(jobs, grouped):
        alone = engine.run(job).images[0].image
        assert np.abs(np.asarray(alone, int) - np.asarray(result.images[0].image, int)).max() <= 1


def test_infotext_carries_lora_hashes_and_the_native_list_as_tags(models):
    engine = Engine(ModelStore(models))
    image = engine.run(recipe(prompt="a red circle <lora:ink:0.7>", loras=[{"name": "paper", "weight": 0.5,
                                                                          "unet_weight": 0.25}])).images[0]
    store = engine.store
    ink = store.hashes.lora_hash(models / "Lora" / "ink.safetensors")
    paper = store.hashes.lora_hash(models / "LyCORIS" / "styles" / "paper.safetensors")
    assert len(ink) == 12 and ink != paper
    assert image.infotext.startswith("a red circle <lora:ink:0.7> <lora:paper:0.5:0.25>\n")
    assert f'Lora hashes: "ink: {ink}, paper: {paper}"' in image.infotext
    from brushwork.infotext import parse_infotext

    parsed, _ = parse_infotext(image.infotext)
    assert [(use.name, use.multipliers) for use in parsed.all_loras()] == [("ink", (0.7, 0.7)), ("paper", (0.5, 0.25))]


def test_addnet_hash_ignores_the_metadata(tmp_path):
    from brushwork.models.hashing import HashCache, addnet_sha256

    tensors = {"lora_unet_x.alpha": torch.tensor(1.0)}
    save_file(tensors, tmp_path / "a.safetensors", metadata={"ss_output_name": "a"})
    save_file(tensors, tmp_path / "b.safetensors", metadata={"ss_output_name": "a much longer name"})
    assert addnet_sha256(tmp_path / "a.safetensors") == addnet_sha256(tmp_path / "b.safetensors")
    cache = HashCache(tmp_path / "hashes.json")
    assert cache.lora_hash(tmp_path / "a.safetensors") == addnet_sha256(tmp_path / "a.safetensors")[:12]
    assert cache.sha256(tmp_path / "a.safetensors") != cache.sha256(tmp_path / "b.safetensors")


def test_a_second_job_on_the_same_model_and_thread_is_refused(models):
    """Two open jobs on one thread would take the first one's patched weights for originals: refused instead."""
    components = tiny_components("sd1")
    lora = load_lora(models / "Lora" / "ink.safetensors", components)
    before = weights(components)
    with components.patcher.applied([LoraPatch(lora, 1.0, 1.0)]):
        with pytest.raises(RuntimeError, match="already has a job's patches applied"):
            with components.patcher.applied([LoraPatch(lora, 0.5, 0.5)]):
                pass
    assert_weights_equal(weights(components), before)
    engine = Engine(ModelStore(models))
    first = engine.generate(recipe(prompt="x <lora:ink:1>", batch_count=2))
    next(first)  # left open, not closed
    with pytest.raises(RuntimeError, match="finish \\(or close\\) that job"):
        engine.run(recipe(prompt="x <lora:paper:1>"))
    first.close()
    assert_weights_equal(weights(engine.store.load("tiny").components),
                         weights(Engine(ModelStore(models)).store.load("tiny").components))
