"""The `brushwork` command line: generate, png-info, --from-png, models, and every bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from brushwork.cli import main
from brushwork.output import read_png_info
from tiny_models import write_tiny_checkpoint

FAST = ["--steps", "2", "-W", "64", "-H", "64", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    write_tiny_checkpoint("sd1", path)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_writes_pngs_with_infotext_and_recipe(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = _run(capsys, "generate", "a cyberpunk street, (brush stroke), [film grain]", "--model", tiny_checkpoint,
                           "-n", "blurry", "--seed", 42, "--batch-size", 2, "--sampler", "Euler a", "-o", out, *FAST)
    assert code == 0
    files = sorted(out.glob("*.png"))
    assert [f.name.split("-")[:2] for f in files] == [["00000", "42"], ["00001", "43"]]
    assert stdout.split() == [str(f) for f in files]
    infotext, recipe_json = read_png_info(files[1])
    assert infotext.splitlines()[0] == "a cyberpunk street, (brush stroke), [film grain]"
    assert infotext.splitlines()[1] == "Negative prompt: blurry"
    assert "Steps: 2, Sampler: Euler a, CFG scale: 7, Seed: 43, Size: 64x64, Model hash: " in infotext
    assert ", Model: tiny" in infotext
    assert '"index": 1' in recipe_json


def test_png_info_and_from_png_remake_the_same_picture(tiny_checkpoint, tmp_path, capsys):
    first = tmp_path / "first"
    _run(capsys, "generate", "a red circle", "--model", tiny_checkpoint, "--seed", 5, "--batch-size", 2,
         "--sampler", "DPM++ 2M SDE Karras", "-o", first, *FAST)
    original = sorted(first.glob("*.png"))[1]

    code, stdout, _ = _run(capsys, "png-info", original)
    assert code == 0 and stdout.startswith("a red circle\n") and "Seed: 6" in stdout
    code, stdout, _ = _run(capsys, "png-info", "--json", original)
    assert code == 0 and '"index": 1' in stdout

    again = tmp_path / "again"
    code, _, _ = _run(capsys, "generate", "--from-png", original, "--model", tiny_checkpoint, "-o", again, "--no-progress")
    assert code == 0
    [remade] = again.glob("*.png")
    assert np.array_equal(np.asarray(Image.open(original)), np.asarray(Image.open(remade)))  # bit for bit
    assert read_png_info(remade)[0] == read_png_info(original)[0]


def test_from_png_accepts_a1111_infotext(tiny_checkpoint, tmp_path, capsys):
    from brushwork.output import save_png

    a1111 = tmp_path / "a1111.png"
    infotext = ("a red circle\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras, "
                "CFG scale: 7, Seed: 11, Size: 64x64, Model hash: 0123456789, Model: whatever, Version: v1.10.1")
    save_png(Image.new("RGB", (64, 64)), a1111, infotext=infotext, recipe_json=None)
    code, _, err = _run(capsys, "generate", "--from-png", a1111, "--model", tiny_checkpoint, "-o", tmp_path / "o", "--no-progress")
    assert code == 0, err
    [made] = (tmp_path / "o").glob("*.png")
    assert "Sampler: DPM++ 2M Karras" in read_png_info(made)[0] and "Seed: 11" in read_png_info(made)[0]


def test_models_lists_an_a1111_folder_with_architecture_and_hash(tmp_path, capsys):
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    write_tiny_checkpoint("sd1", checkpoints / "one.safetensors")
    (checkpoints / "xl").mkdir()
    write_tiny_checkpoint("sdxl", checkpoints / "xl" / "two.safetensors")
    write_tiny_checkpoint("sd1-inpaint", checkpoints / "paint.safetensors")
    (tmp_path / "models" / "Lora").mkdir()
    (tmp_path / "models" / "Lora" / "style.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    code, stdout, _ = _run(capsys, "models", "--models-dir", tmp_path / "models")
    assert code == 0
    rows = {line.split()[1]: line for line in stdout.splitlines()[1:]}
    assert "SD 1.x" in rows["one.safetensors"] and "SDXL" in rows["xl/two.safetensors"]
    assert "SD 1.x inpainting" in rows["paint.safetensors"]
    assert "LoRA" in rows["style.safetensors"]
    assert all(len(line.split()[-1]) == 10 for line in rows.values())  # A1111's short sha256


def test_model_by_name_from_models_dir(tmp_path, capsys):
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    write_tiny_checkpoint("sd1", checkpoints / "mine.safetensors")
    code, _, err = _run(capsys, "generate", "x", "--models-dir", tmp_path / "models", "--model", "mine", "-o", tmp_path / "o", *FAST)
    assert code == 0, err
    code, _, err = _run(capsys, "generate", "x", "--models-dir", tmp_path / "models", "--model", "nope", "-o", tmp_path / "o", *FAST)
    assert code == 2 and "'nope' not found" in err and "mine.safetensors" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "x", "--model", "/no/such/model.safetensors"], "not found"),
        (["generate", "x", "--model", "{ckpt}", "--sampler", "Euler b"], "unknown sampler 'Euler b'"),
        (["generate", "x", "--model", "{ckpt}", "-W", "500"], "width: must be a multiple of 8"),
        (["generate", "x", "--model", "{ckpt}", "--steps", "0"], "steps"),
        (["generate", "--model", "{ckpt}"], "give a prompt"),
        (["generate", "x", "--model", "{corrupt}"], "corrupt.safetensors"),
        (["generate", "x", "--model", "{pickle}"], "--allow-pickle"),
        (["png-info", "{corrupt}"], "not an image"),
        (["png-info", "/no/such.png"], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tiny_checkpoint, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(os.urandom(4096))
    pickled = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, pickled)
    argv = [a.format(ckpt=tiny_checkpoint, corrupt=corrupt, pickle=pickled) for a in argv]
    code, _, err = _run(capsys, *argv, *(["-o", tmp_path / "o"] if argv[0] == "generate" else []))
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_console_script_and_ctrl_c_stops_cleanly(tiny_checkpoint, tmp_path):
    """The installed `brushwork` command; SIGINT mid-sampling exits 130 without a traceback."""
    command = [sys.executable, "-m", "brushwork.cli", "generate", "a red circle", "--model", str(tiny_checkpoint),
               "--steps", "400", "-W", "64", "-H", "64", "-o", str(tmp_path / "o")]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 120
    while "step" not in seen and time.monotonic() < deadline:  # the progress bar has started
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "interrupted" in rest and "Traceback" not in rest
    assert not list((tmp_path / "o").glob("*.png*"))  # no half-written picture


def test_img2img_inpaint_outpaint_and_hires_flags(tiny_checkpoint, tmp_path, capsys):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(init)
    mask = tmp_path / "mask.png"
    Image.new("L", (32, 24), 255).save(mask)  # another size: resized, with a note
    code, stdout, err = _run(capsys, "generate", "a red circle", "--model", tiny_checkpoint, "--init-image", init,
                             "--strength", 0.5, "--mask", mask, "--only-masked", "--masked-content", "fill",
                             "-o", tmp_path / "a", "--steps", 2, "--no-progress")
    assert code == 0, err
    assert "note: mask is 32x24" in err
    assert Image.open(stdout.split()[0]).size == (64, 48)

    code, stdout, err = _run(capsys, "generate", "a red circle", "--model", tiny_checkpoint, "--init-image", init,
                             "--outpaint", "left=16,top=8", "-o", tmp_path / "b", "--steps", 2, "--no-progress")
    assert code == 0, err
    assert Image.open(stdout.split()[0]).size == (80, 56)

    code, stdout, err = _run(capsys, "generate", "a red circle", "--model", tiny_checkpoint, "-W", 32, "-H", 32,
                             "--hires-scale", 2, "--hires-steps", 2, "-o", tmp_path / "c", "--steps", 2, "--no-progress")
    assert code == 0, err
    assert Image.open(stdout.split()[0]).size == (64, 64)

    code, _, err = _run(capsys, "generate", "x", "--model", tiny_checkpoint, "--init-image", init, "--outpaint", "up=8",
                        "-o", tmp_path / "d")
    assert code == 2 and "--outpaint: expected" in err
    code, _, err = _run(capsys, "generate", "x", "--model", tiny_checkpoint, "--hires-scale", 20, "-o", tmp_path / "d")
    assert code == 2 and "hires.scale" in err


def test_restore_faces_flag_runs_the_restorer_and_is_recorded(tiny_checkpoint, tmp_path, capsys):
    from safetensors.torch import save_file
    from test_faces import tiny_gfpgan

    models = tmp_path / "models"
    code, _, err = _run(capsys, "generate", "x", "--model", tiny_checkpoint, "--models-dir", models,
                        "--restore-faces", "GFPGAN", "-o", tmp_path / "o", *FAST)
    assert code == 2 and "GFPGAN" in err and str(models / "GFPGAN") in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())  # refused before painting

    (models / "GFPGAN").mkdir(parents=True)
    save_file(tiny_gfpgan(), models / "GFPGAN" / "GFPGANv1.4.safetensors")
    code, _, err = _run(capsys, "generate", "x", "--model", tiny_checkpoint, "--models-dir", models,
                        "--restore-faces", "GFPGAN", "--codeformer-weight", "0.3", "-o", tmp_path / "o", *FAST)
    assert code == 0, err
    [made] = (tmp_path / "o").glob("*.png")
    infotext = read_png_info(made)[0]
    assert "Face restoration: GFPGAN" in infotext, infotext


def test_lora_flag_equals_the_prompt_tag_and_from_png_remakes_it(tmp_path, capsys):
    from safetensors.torch import save_file

    from tiny_loras import kohya_file, lora_factors

    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    components = write_tiny_checkpoint("sd1", models / "Stable-diffusion" / "tiny.safetensors")
    (models / "Lora").mkdir()
    save_file(kohya_file(components, lora_factors(), seed=1), models / "Lora" / "ink.safetensors")
    common = ["--models-dir", models, "--model", "tiny", "--seed", "5", *FAST]
    code, _, err = _run(capsys, "generate", "a circle", "--lora", "ink:0.7:0.4", "-o", tmp_path / "flag", *common)
    assert code == 0, err
    code, _, err = _run(capsys, "generate", "a circle <lora:ink:0.7:0.4>", "-o", tmp_path / "tag", *common)
    assert code == 0, err
    [flag], [tag] = (tmp_path / "flag").glob("*.png"), (tmp_path / "tag").glob("*.png")
    assert np.array_equal(np.asarray(Image.open(flag)), np.asarray(Image.open(tag)))
    code, _, err = _run(capsys, "generate", "a circle", "-o", tmp_path / "plain", *common)
    [plain] = (tmp_path / "plain").glob("*.png")
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(tag)))

    code, _, err = _run(capsys, "generate", "--from-png", flag, "--models-dir", models, "-o", tmp_path / "again",
                        "--no-progress")
    assert code == 0, err
    [again] = (tmp_path / "again").glob("*.png")
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(flag)))  # bit for bit
    assert 'Lora hashes: "ink: ' in read_png_info(again)[0]

    code, _, err = _run(capsys, "generate", "x", "--lora", "ink:heavy", "-o", tmp_path / "bad", *common)
    assert code == 2 and "--lora: expected NAME" in err
    code, _, err = _run(capsys, "generate", "x", "--lora", "nothing", "-o", tmp_path / "bad", *common)
    assert code == 2 and "'nothing' not found" in err and "ink.safetensors" in err
