"""`brushwork merge`: LoRAs baked into a checkpoint paint what the patched model paints; A1111's weighted sum and
add difference give their formulas; the file is a single-file checkpoint in the ldm layout with A1111's merge
metadata; bad requests are one clear line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from brushwork.cli import main
from brushwork.engine.engine import Engine
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe
from tiny_loras import kohya_file, lora_factors
from tiny_models import tiny_components, write_tiny_checkpoint

RECIPE = dict(prompt="a red circle", seed=9, steps=3, width=32, height=32, sampler="Euler")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-models")
    (root / "Stable-diffusion").mkdir()
    for seed, name in enumerate(("a", "b", "c")):
        components = write_tiny_checkpoint("sd1", root / "Stable-diffusion" / f"{name}.safetensors", seed=seed)
    write_tiny_checkpoint("sdxl", root / "Stable-diffusion" / "xl.safetensors")
    write_tiny_checkpoint("sd1-inpaint", root / "Stable-diffusion" / "paint.safetensors", seed=5)
    (root / "Lora").mkdir()
    save_file(kohya_file(components, lora_factors(), seed=1), root / "Lora" / "ink.safetensors")
    save_file(kohya_file(components, lora_factors(rank=2), seed=2), root / "Lora" / "paper.safetensors")
    (root / "VAE").mkdir()
    vae = tiny_components("sd1", seed=7).vae
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, root / "VAE" / "other-vae.safetensors")
    return root


def merge(capsys, models, *argv) -> tuple[int, str]:
    code = main(["merge", *map(str, argv), "--models-dir", str(models), "--no-progress"])
    return code, capsys.readouterr().err


def picture(models, model: str, prompt: str = RECIPE["prompt"]) -> bytes:
    engine = Engine(ModelStore(models, allow_paths=True))
    return engine.run(Recipe(**RECIPE | {"prompt": prompt, "model": model})).images[0].image.tobytes()


def test_baked_loras_paint_what_the_patched_model_paints(models, tmp_path, capsys):
    out = tmp_path / "baked.safetensors"
    code, err = merge(capsys, models, "a", "--lora", "ink:0.7", "--lora", "paper:0.4:-0.2", "-o", out)
    assert code == 0, err
    assert picture(models, str(out)) == picture(models, "a", f"{RECIPE['prompt']} <lora:ink:0.7> <lora:paper:0.4:-0.2>")
    with safe_open(str(out), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert keys == set(load_file(models / "Stable-diffusion" / "a.safetensors"))  # the same ldm layout as its source
    recipe = json.loads(metadata["sd_merge_recipe"])
    assert recipe["interp_method"] == "No interpolation" and recipe["loras"] == ["ink:0.7", "paper:0.4:-0.2"]
    assert picture(models, "a") != picture(models, str(out))  # the source file is as it was


def tensors(path) -> dict[str, torch.Tensor]:
    return load_file(path)


@pytest.mark.parametrize("method, names, formula", [
    ("weighted-sum", ("a", "b"), lambda a, b, c, m: a * (1 - m) + b * m),
    ("add-difference", ("a", "b", "c"), lambda a, b, c, m: a + (b - c) * m),
])
def test_a1111_merge_methods_give_their_formulas(models, tmp_path, capsys, method, names, formula):
    out = tmp_path / f"{method}.safetensors"
    code, err = merge(capsys, models, *names, "--method", method, "-m", "0.25", "-o", out)
    assert code == 0, err
    sources = [tensors(models / "Stable-diffusion" / f"{name}.safetensors") for name in names] + [None]
    merged = tensors(out)
    for key, value in merged.items():
        a, b, c = sources[0][key], sources[1][key], sources[2][key] if sources[2] is not None else None
        if value.is_floating_point():
            assert torch.allclose(value, formula(a, b, c, 0.25), atol=1e-6), key
    recipe = json.loads(safe_open(str(out), "pt").metadata()["sd_merge_recipe"])
    assert recipe["multiplier"] == 0.25 and recipe["secondary_model_hash"] is not None
    engine = Engine(ModelStore(models, allow_paths=True))
    assert len(engine.run(Recipe(**RECIPE | {"model": str(out)})).images) == 1  # brushwork loads and paints it


def test_inpainting_merge_keeps_the_mask_channels_and_vae_bake_in(models, tmp_path, capsys):
    out = tmp_path / "paint-merge.safetensors"
    code, err = merge(capsys, models, "paint", "b", "-m", "0.5", "--vae", "other-vae", "--half", "-o", out)
    assert code == 0, err
    merged, a = tensors(out), tensors(models / "Stable-diffusion" / "paint.safetensors")
    b = tensors(models / "Stable-diffusion" / "b.safetensors")
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    assert merged[conv_in].dtype == torch.float16 and merged[conv_in].shape[1] == 9
    assert torch.allclose(merged[conv_in][:, 4:].float(), a[conv_in][:, 4:], atol=1e-3)  # A's mask channels
    assert torch.allclose(merged[conv_in][:, :4].float(), (a[conv_in][:, :4] + b[conv_in]) / 2, atol=1e-3)
    vae = tensors(models / "VAE" / "other-vae.safetensors")
    baked = ModelStore(allow_paths=True).load(str(out)).components.vae.state_dict()
    assert all(torch.allclose(baked[key].float(), vae[key], atol=1e-3) for key in vae)


@pytest.mark.parametrize("argv, words", [
    (["a", "xl", "-o", "{out}"], ("cannot merge an SDXL checkpoint into an SD 1.x one",)),
    (["b", "paint", "-o", "{out}"], ("the inpainting model must be the first",)),
    (["a", "-o", "{out}"], ("nothing to do",)),
    (["a", "b", "--method", "add-difference", "-o", "{out}"], ("Add difference needs three checkpoints",)),
    (["a", "--lora", "nothing:1", "-o", "{out}"], ("'nothing' not found",)),
    (["a", "b", "-o", "{tmp}/out.ckpt"], ("write a .safetensors file",)),
    (["a", "b", "c", "a", "-o", "{out}"], ("at most three checkpoints",)),
])
def test_bad_merges_are_one_clear_line(models, tmp_path, capsys, argv, words):
    out = tmp_path / "out.safetensors"
    code, err = merge(capsys, models, *[arg.format(out=out, tmp=tmp_path) for arg in argv])
    assert code == 2 and all(word in err for word in words), err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_refuses_to_overwrite_without_force(models, tmp_path, capsys):
    out = tmp_path / "kept.safetensors"
    out.write_bytes(b"precious")
    code, err = merge(capsys, models, "a", "b", "-o", out)
    assert code == 2 and "--force" in err and out.read_bytes() == b"precious"
    code, err = merge(capsys, models, "a", "b", "-o", out, "--force")
    assert code == 0, err and out.read_bytes() != b"precious"
