"""Upscalers by A1111 name: Pillow filters and spandrel-recognised networks from ESRGAN/, the limits,
tiled network runs, and `brushwork upscale`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN

from brushwork.cli import main
from brushwork.errors import BrushworkError, ModelLoadError
from brushwork.infotext import parse_infotext
from brushwork.models.store import ModelStore
from brushwork.output import read_png_info, save_png
from brushwork.upscale import (
    NetworkCache,
    TileSettings,
    add_postprocess_info,
    list_upscalers,
    plan_size,
    upscale,
)
from brushwork.upscale.tiles import blend_weights, tile_spans


def tiny_esrgan(scale: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """An ESRGAN (RRDBNet) 8 filters wide with 1 block, seeded, in the community (old-arch) key layout
    that `4x-UltraSharp` and friends use: model.0.weight, model.1.sub.0.RDB1.conv1.0.weight, ..."""
    net = ESRGAN(num_filters=8, num_blocks=1, scale=scale)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            if parameter.dim() > 1:  # fan-in scaled, so activations neither vanish nor explode
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / math.sqrt(parameter[0].numel()))
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)
        last = max(int(key.split(".")[1]) for key in net.state_dict())
        net.state_dict()[f"model.{last}.bias"].fill_(0.5)  # outputs mid-grey, so clamping hides nothing
    return {key: value.contiguous() for key, value in net.state_dict().items()}


def picture(size: int = 32, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A smooth random picture (bicubic-enlarged noise), like real content rather than pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    channels = len(mode)
    small = torch.rand(1, channels, size // 4, size // 4, generator=generator)
    pixels = torch.nn.functional.interpolate(small, size=(size, size), mode="bicubic").clamp(0, 1)
    return Image.fromarray((pixels[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), mode)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    folder = root / "ESRGAN"
    folder.mkdir()
    four, two = tiny_esrgan(4), tiny_esrgan(2, seed=1)
    save_file(four, str(folder / "4x-tiny.safetensors"))
    save_file(two, str(folder / "2x-tiny.safetensors"))
    torch.save(four, folder / "4x-pickled.pth")
    torch.save({"params_ema": four}, folder / "4x-basicsr.pth")  # how Real-ESRGAN/SwinIR releases nest them
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(folder / "not-an-upscaler.safetensors"))
    return root


@pytest.fixture
def store(models_dir):
    return ModelStore(models_dir)


def test_lists_builtins_then_networks_by_name(store):
    assert list_upscalers(store) == ["Lanczos", "Nearest", "2x-tiny", "4x-basicsr", "4x-pickled", "4x-tiny", "not-an-upscaler"]
    assert list_upscalers(None) == ["Lanczos", "Nearest"]


def test_network_upscales_by_its_scale_and_below_it(store):
    source = picture()
    four = upscale(source, "4x-tiny", 4, store)
    two = upscale(source, "4x-tiny.safetensors", 2, store)
    assert four.size == (128, 128) and four.mode == "RGB"
    assert two.size == (64, 64)
    # 2x with a 4x network is the 4x result shrunk with Lanczos, as A1111 does
    assert np.array_equal(np.asarray(two), np.asarray(four.resize((64, 64), Image.Resampling.LANCZOS)))
    # and it is the network's work, not a filter's
    lanczos = np.asarray(upscale(source, "Lanczos", 4, store)).astype(int)
    assert np.abs(np.asarray(four).astype(int) - lanczos).mean() > 5


def test_other_architectures_load_too(tmp_path):
    """Real-ESRGAN's compact network (realesr-general-x4v3's architecture), as spandrel recognises it."""
    (tmp_path / "ESRGAN").mkdir()
    torch.manual_seed(0)
    save_file(Compact(num_feat=8, num_conv=2, upscale=4).state_dict(), str(tmp_path / "ESRGAN" / "compact.safetensors"))
    assert upscale(picture(), "compact", 2, ModelStore(tmp_path)).size == (64, 64)


def test_factor_beyond_the_network_runs_it_again(store):
    passes = []
    result = upscale(picture(16), "2x-tiny", 3, store, progress=lambda done, total: passes.append(done == total))
    assert result.size == (48, 48)
    assert passes.count(True) == 2  # 16 -> 32 -> 64, then Lanczos to 48


def test_pickles_need_the_opt_in(models_dir):
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        upscale(picture(), "4x-pickled", 4, ModelStore(models_dir))
    trusting = ModelStore(models_dir, allow_pickle=True)
    expected = np.asarray(upscale(picture(), "4x-tiny", 4, trusting))
    assert np.array_equal(np.asarray(upscale(picture(), "4x-pickled", 4, trusting)), expected)
    assert np.array_equal(np.asarray(upscale(picture(), "4x-basicsr", 4, trusting)), expected)


def test_tiled_run_matches_the_whole_picture(store):
    source = picture(48, seed=3)
    whole = np.asarray(upscale(source, "4x-tiny", 4, store, tiles=TileSettings(size=64, overlap=0))).astype(int)
    # 2x2 tiles of 32 pixels overlapping by 16 (the network sees ~17 pixels around each one)
    tiled = np.asarray(upscale(source, "4x-tiny", 4, store, tiles=TileSettings(size=32, overlap=16))).astype(int)
    butted = np.asarray(upscale(source, "4x-tiny", 4, store, tiles=TileSettings(size=16, overlap=0))).astype(int)
    difference = np.abs(tiled - whole)
    # Tiles see less context near their edges; the blend hides it: measured max 10, mean 0.2 of 255.
    assert difference.max() <= 16 and difference.mean() < 0.5
    # Tiles butted together without overlap show their seams: what the blending is for.
    assert np.abs(butted - whole).max() > 4 * difference.max()


def test_tile_spans_cover_evenly_and_weights_sum_to_one():
    assert tile_spans(10, 16, 4) == [(0, 10)]
    spans = tile_spans(100, 32, 8)
    assert spans[0][0] == 0 and spans[-1][1] == 100
    assert all(a[1] - b[0] >= 8 for a, b in zip(spans, spans[1:]))
    total = torch.zeros(400)
    for (start, _), weight in zip(spans, blend_weights(spans, 4)):
        total[start * 4 : start * 4 + len(weight)] += weight
    assert torch.allclose(total, torch.ones(400))


def test_filters_make_exact_sizes(store):
    source = picture()
    assert upscale(source, "lanczos", 2, store).size == (64, 64)
    assert upscale(source, "Lanczos", 0.5, store).size == (16, 16)
    nearest = upscale(source, "Nearest", 2, store)
    assert np.array_equal(np.asarray(nearest), np.asarray(source).repeat(2, axis=0).repeat(2, axis=1))
    # another aspect ratio is covered and centre-cropped, not stretched
    wide = upscale(source, "Nearest", (100, 50), store)
    assert wide.size == (100, 50)
    assert np.array_equal(np.asarray(wide), np.asarray(source.resize((100, 100), Image.Resampling.NEAREST))[25:75])
    assert upscale(source, "4x-tiny", (100, 50), store).size == (100, 50)


def test_transparency_survives_a_network(store):
    result = upscale(picture(mode="RGBA"), "4x-tiny", 2, store)
    assert result.mode == "RGBA" and result.size == (64, 64)


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        (0, "more than 0 and at most 8, got 0"),
        (-1, "more than 0"),
        (100, "at most 8, got 100"),
        (float("nan"), "more than 0"),
        ((512, 32), "16 times the 32x32 picture"),
        ((0, 10), "must be positive"),
    ],
)
def test_bad_factors_are_refused(scale, message):
    with pytest.raises(BrushworkError, match=message):
        plan_size((32, 32), scale)


def test_results_past_the_side_limit_are_refused():
    assert plan_size((2048, 2048), 8).final == (16384, 16384)
    with pytest.raises(BrushworkError, match="16384 pixel limit"):
        plan_size((2049, 1000), 8)


def test_unknown_names_and_files_give_clear_errors(store, models_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="unknown upscaler 'ESRGAN_4x'; choose one of: Lanczos, Nearest, 2x-tiny"):
        upscale(picture(), "ESRGAN_4x", 2, store)
    with pytest.raises(ModelLoadError, match="not an upscaler brushwork recognises"):
        upscale(picture(), "not-an-upscaler", 2, store)
    outside = tmp_path / "elsewhere.safetensors"
    save_file(tiny_esrgan(4), str(outside))
    link = models_dir / "ESRGAN" / "linked.safetensors"
    link.symlink_to(outside)
    try:
        with pytest.raises(ModelLoadError, match="outside the models folder"):
            upscale(picture(), "linked", 2, store)
    finally:
        link.unlink()


def test_upscale_fills_the_callers_cache(store):
    cache = NetworkCache(max_loaded=2)
    upscale(picture(16), "4x-tiny", 4, store, cache=cache)
    upscale(picture(16), "2x-tiny", 2, store, cache=cache)
    upscale(picture(16), "4x-tiny", 2, store, cache=cache)
    assert len(cache) == 2


def test_cache_keeps_networks_until_the_file_changes(tmp_path):
    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    path = folder / "4x.safetensors"
    save_file(tiny_esrgan(4), str(path))
    cache = NetworkCache(max_loaded=1)
    first = cache.get(path, allow_pickle=False, device="cpu", dtype=torch.float32)
    assert cache.get(path, allow_pickle=False, device="cpu", dtype=torch.float32) is first
    save_file(tiny_esrgan(4, seed=5), str(path))
    assert cache.get(path, allow_pickle=False, device="cpu", dtype=torch.float32) is not first
    assert len(cache) == 1


def test_postprocess_fields_join_the_parameters_line():
    generated = "a castle\nNegative prompt: fog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 32x32"
    fields = {"Postprocess upscale by": "2", "Postprocess upscaler": "4x, sharp"}
    once = add_postprocess_info(generated, fields)
    assert once == generated + ', Postprocess upscale by: 2, Postprocess upscaler: "4x, sharp"'
    twice = add_postprocess_info(once, {"Postprocess upscale by": "4", "Postprocess upscaler": "Lanczos"})
    assert twice.endswith("Size: 32x32, Postprocess upscale by: 4, Postprocess upscaler: Lanczos")
    assert parse_infotext(twice)[0].seed == 1  # still a recipe
    assert add_postprocess_info("just a prompt", fields) == "just a prompt"
    assert add_postprocess_info(None, fields) == 'Postprocess upscale by: 2, Postprocess upscaler: "4x, sharp"'


# --- brushwork upscale ------------------------------------------------------------------------------


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_pngs_with_the_postprocess_infotext(models_dir, tmp_path, capsys):
    generated = tmp_path / "00007-1-a-castle.png"
    infotext = "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 32x32"
    save_png(picture(), generated, infotext=infotext, recipe_json=None)
    plain = tmp_path / "plain.png"
    picture(seed=2).save(plain)
    out = tmp_path / "out"
    code, stdout, _ = _run(capsys, "upscale", generated, plain, "--upscaler", "4x-tiny", "--scale", 2,
                           "--models-dir", models_dir, "-o", out, "--no-progress")
    assert code == 0
    written = [out / "00000-00007-1-a-castle.png", out / "00001-plain.png"]
    assert stdout.split() == [str(path) for path in written]
    assert read_png_info(written[0])[0] == infotext + ", Postprocess upscale by: 2, Postprocess upscaler: 4x-tiny"
    assert read_png_info(written[1])[0] == "Postprocess upscale by: 2, Postprocess upscaler: 4x-tiny"
    assert all(Image.open(path).size == (64, 64) for path in written)

    code, stdout, _ = _run(capsys, "upscale", plain, "--upscaler", "Lanczos", "-W", 100, "-H", 50, "-o", out, "--no-progress")
    assert code == 0 and Image.open(stdout.strip()).size == (100, 50)
    assert read_png_info(stdout.strip())[0] == (
        "Postprocess upscale to: 100x50, Postprocess crop to: 100x50, Postprocess upscaler: Lanczos"
    )


def test_cli_lists_upscalers(models_dir, capsys):
    code, stdout, _ = _run(capsys, "upscale", "--list", "--models-dir", models_dir)
    assert code == 0 and stdout.split()[:3] == ["Lanczos", "Nearest", "2x-tiny"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--scale", 0], "more than 0 and at most 8, got 0"),
        (["--scale", 100], "at most 8, got 100"),
        (["--upscaler", "ESRGAN_4x"], "unknown upscaler 'ESRGAN_4x'; choose one of: Lanczos, Nearest, 2x-tiny, 4x-basicsr"),
        (["--upscaler", "4x-pickled"], "--allow-pickle"),
        (["--scale", 2, "-W", 64], "either --scale or --width/--height"),
    ],
)
def test_cli_refuses_bad_input(arguments, message, models_dir, tmp_path, capsys):
    source = tmp_path / "in.png"
    picture().save(source)
    argv = ["upscale", source, "--models-dir", models_dir, "-o", tmp_path / "out", "--no-progress"]
    if "--upscaler" not in arguments:
        argv += ["--upscaler", "4x-tiny"]
    code, _, stderr = _run(capsys, *argv, *arguments)
    assert code == 2
    assert stderr.startswith("error: ") and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_file_that_is_not_a_picture(tmp_path, capsys):
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    code, _, stderr = _run(capsys, "upscale", fake, "--upscaler", "Lanczos", "-o", tmp_path / "out")
    assert code == 2 and "is not a picture" in stderr
    code, _, stderr = _run(capsys, "upscale", tmp_path / "missing.png", "--upscaler", "Lanczos")
    assert code == 2 and "no such file" in stderr
