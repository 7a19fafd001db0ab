"""Training the embedded model (brushwork.train, `brushwork data` / `brushwork train base`) at toy widths.

Every run here uses the "toy" preset: 32x32 pictures, a ~3M-parameter model, a handful of steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from brushwork.cli import main
from brushwork.errors import BrushworkError
from brushwork.shapes import make_dataset
from brushwork.train.base import train_base
from brushwork.train.data import batch_indices, load_folder, tokenize
from brushwork.train.diffusion import DiffusionTrainer, LatentSet
from brushwork.train.export import assemble, sample_grid, write_model
from brushwork.train.loop import LoopHooks, TrainingInterrupted, learning_rate
from brushwork.train.models import DEFAULT_SPEC, TOY_SPEC, build_components, count_parameters
from brushwork.train.settings import resolve
from brushwork.train.state import TrainingState, state_dir_for
from brushwork.train.vae import encode_dataset, latent_scale, train_vae

TOY_IMAGES = 24


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapes")
    make_dataset(folder, TOY_IMAGES, seed=5, size=32)
    return folder


def _quiet(_: str) -> None:
    pass


# --- data -----------------------------------------------------------------------------------------------


def test_folder_reads_pictures_and_captions(toy_data: Path) -> None:
    data = load_folder(toy_data)
    assert data.images.shape == (TOY_IMAGES, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.captions[0] == (toy_data / "00000.txt").read_text(encoding="utf-8")
    assert len(load_folder(toy_data, max_images=5)) == 5


def test_captions_tokenize_as_the_engine_tokenizes_prompts() -> None:
    from brushwork.engine.conditioning import PromptEncoder

    components = build_components(TOY_SPEC)
    encoder = PromptEncoder(components, 1, torch.device("cpu"), torch.float32)
    captions = ["a red circle, top left, blue background", "two small green crosses near the top", ""]
    ids = tokenize(components.tokenizers[0], captions)
    for caption, row in zip(captions, ids):
        assert row.tolist() == encoder._chunks(caption)[0][0].tokens


def test_batches_cover_every_picture_once_per_epoch() -> None:
    seen = torch.cat([batch_indices(10, 4, step, seed=3) for step in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(10, 4, 2, seed=3), batch_indices(10, 4, 2, seed=3))


def test_learning_rate_warms_up_then_decays() -> None:
    rates = [learning_rate(s, 100, 1.0, 10, 0.1) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[99] == pytest.approx(0.1, abs=1e-3) and all(a >= b for a, b in zip(rates[9:], rates[10:]))


@pytest.mark.parametrize("make", ["missing", "empty", "no captions"])
def test_bad_data_folder_is_a_user_error(tmp_path: Path, make: str) -> None:
    folder = tmp_path / "data"
    if make != "missing":
        folder.mkdir()
    if make == "no captions":
        make_dataset(folder, 2, seed=0, size=32)
        (folder / "00001.txt").unlink()
    with pytest.raises(BrushworkError):
        load_folder(folder)


# --- the shipped architecture -------------------------------------------------------------------------


def test_default_architecture_fits_the_size_budget() -> None:
    components = build_components(DEFAULT_SPEC)
    parameters = sum(count_parameters(m) for m in components.modules())
    assert parameters * 2 < 30e6  # fp16 bytes: the shipped file must stay under 30 MB
    assert components.unet.config.attention_head_dim == 8  # SD 1.x: 8 heads per level
    assert components.text_encoders[0].config.vocab_size == 49408
    assert 2 ** (len(components.vae.config.block_out_channels) - 1) == 4  # 64 px -> 16x16 latents
    # At the last timestep a 16x16 latent keeps < 0.05% of its signal (SD's schedule keeps 0.47%), so the
    # layout of a picture must come from the prompt, not from leftovers of the picture in the noise.
    schedule = DDPMScheduler.from_config(components.scheduler_config)
    assert schedule.alphas_cumprod[-1] < 5e-4


# --- stages -------------------------------------------------------------------------------------------


def _hooks(**kwargs) -> LoopHooks:
    return LoopHooks(checkpoint=lambda done: None, checkpoint_every=0, progress=False, **kwargs)


def test_vae_steps_lower_the_loss(toy_data: Path, tmp_path: Path) -> None:
    settings = resolve("toy", vae_steps=12, vae_batch_size=8)
    components = build_components(TOY_SPEC)
    losses: list[float] = []
    train_vae(components.vae, load_folder(toy_data), settings, TrainingState(tmp_path),
              _hooks(on_step=lambda stage, done, loss: losses.append(loss)))
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def _toy_trainer(toy_data: Path, **overrides) -> DiffusionTrainer:
    settings = resolve("toy", **overrides)
    components = build_components(TOY_SPEC, seed=settings.seed)
    data = load_folder(toy_data)
    mean = encode_dataset(components.vae, data.images)
    latents = LatentSet(mean, tokenize(components.tokenizers[0], data.captions), latent_scale(mean))
    empty = tokenize(components.tokenizers[0], [""])
    return DiffusionTrainer(components.unet, components.text_encoders[0], latents, empty, components.scheduler_config, settings)


def test_diffusion_steps_lower_the_loss(toy_data: Path) -> None:
    trainer = _toy_trainer(toy_data, steps=15, lr=2e-3, batch_size=8)
    yardstick = [100, 101, 102, 103]  # fixed batches (noise, timesteps) never trained on
    before = trainer.evaluation_loss(yardstick)
    for step in range(15):
        trainer.step(step)
    assert trainer.evaluation_loss(yardstick) < 0.9 * before


def test_the_model_learns_v_and_keeps_the_noisiest_steps_weighted(toy_data: Path) -> None:
    trainer = _toy_trainer(toy_data, batch_size=8)
    assert trainer.predicts_v and TOY_SPEC.prediction_type == "v_prediction"
    batch = trainer.batch(0)
    alpha_bar = trainer.alphas_cumprod[batch["timesteps"]].view(-1, 1, 1, 1)
    picked = batch_indices(len(trainer.latents), 8, 0, trainer.settings.seed)
    clean = trainer.latents.mean[picked] * trainer.latents.scale
    # v is what turns the noisy latent back into the picture: x0 = sqrt(abar) x_t - sqrt(1 - abar) v.
    rebuilt = alpha_bar.sqrt() * batch["noisy"] - (1 - alpha_bar).sqrt() * batch["target"]
    assert torch.allclose(rebuilt, clean, atol=1e-4)
    # Weight on the picture error = weight * (SNR + 1): 1 at the noisiest steps, capped at gamma (5) near clean.
    snr = (alpha_bar / (1 - alpha_bar)).flatten()
    on_picture = batch["weights"] * (snr + 1)
    assert torch.allclose(on_picture, torch.clamp(snr + 1, max=5.0), rtol=1e-4)


def test_an_epsilon_model_learns_the_noise(toy_data: Path) -> None:
    reference = _toy_trainer(toy_data, batch_size=8)
    config = dict(build_components(TOY_SPEC).scheduler_config, prediction_type="epsilon")
    trainer = DiffusionTrainer(reference.unet, reference.text_encoder, reference.latents, reference.empty_ids, config,
                               reference.settings)
    batch = trainer.batch(0)
    assert not trainer.predicts_v
    assert torch.allclose(batch["noisy"], reference.batch(0)["noisy"])  # the same noise and timesteps
    alpha_bar = trainer.alphas_cumprod[batch["timesteps"]].view(-1, 1, 1, 1)
    clean = (batch["noisy"] - (1 - alpha_bar).sqrt() * batch["target"]) / alpha_bar.sqrt()
    picked = batch_indices(len(trainer.latents), 8, 0, trainer.settings.seed)
    assert torch.allclose(clean, trainer.latents.mean[picked] * trainer.latents.scale, atol=1e-3)


# --- the whole run: interrupt, resume, output ---------------------------------------------------------


def _train(data: Path, output: Path, **kwargs):
    return train_base(data, output, preset="toy", progress=False, say=_quiet, **kwargs)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(state_dir_for(path) / "diffusion.pt", weights_only=True)
    return {**{f"unet.{k}": v for k, v in state["unet"].items()}, **{f"ema.{k}": v for k, v in state["ema_unet"].items()},
            **{f"text.{k}": v for k, v in state["text_encoder"].items()}}


@pytest.fixture(scope="module")
def uninterrupted(toy_data: Path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("straight") / "model.safetensors"
    _train(toy_data, output)
    return output


@pytest.mark.parametrize("stage, stop_at", [("vae", 2), ("diffusion", 4)])
def test_resume_after_interruption_reaches_the_same_weights(
    toy_data: Path, tmp_path: Path, uninterrupted: Path, stage: str, stop_at: int
) -> None:
    output = tmp_path / "model.safetensors"
    stop = {"now": False}

    def on_step(current: str, done: int, loss: float) -> None:
        stop["now"] = current == stage and done == stop_at

    with pytest.raises(TrainingInterrupted) as stopped:
        _train(toy_data, output, should_stop=lambda: stop["now"], on_step=on_step)
    assert (stopped.value.stage, stopped.value.step) == (stage, stop_at)
    assert not output.exists()
    with pytest.raises(BrushworkError, match="--resume"):
        _train(toy_data, output)  # a saved state is never overwritten silently
    report = _train(toy_data, output, resume=True)
    assert report.record["resumed"]
    # Bitwise: every step draws from its own seeded generator, and CPU kernels are deterministic.
    expected, got = _weights(uninterrupted), _weights(output)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # The model files hold the same tensors and metadata (safetensors orders metadata keys at random).
    from brushwork.models.single_file import read_metadata, read_state_dict

    written, reference = read_state_dict(output), read_state_dict(uninterrupted)
    assert written.keys() == reference.keys() and all(torch.equal(written[k], reference[k]) for k in written)
    assert read_metadata(output) == read_metadata(uninterrupted)


def test_resume_refuses_other_settings_and_other_data(toy_data: Path, tmp_path: Path) -> None:
    output = tmp_path / "model.safetensors"
    with pytest.raises(TrainingInterrupted):
        _train(toy_data, output, should_stop=lambda: True)
    with pytest.raises(BrushworkError, match="batch_size"):
        _train(toy_data, output, resume=True, overrides={"batch_size": 2})
    other = tmp_path / "other"
    make_dataset(other, TOY_IMAGES, seed=99, size=32)
    with pytest.raises(BrushworkError, match="differs"):
        _train(other, output, resume=True)


def test_vae_from_an_earlier_model_replaces_stage_one(toy_data: Path, tmp_path: Path, uninterrupted: Path) -> None:
    from brushwork.models.single_file import read_state_dict

    output = tmp_path / "model.safetensors"
    stages = set()
    report = _train(toy_data, output, vae_from=uninterrupted, on_step=lambda stage, done, loss: stages.add(stage))
    assert stages == {"diffusion"}  # not one VAE step
    assert report.record["vae_from"] == str(uninterrupted.resolve()) and "vae" not in report.record["wall_seconds"]
    donor, written = read_state_dict(uninterrupted), read_state_dict(output)
    vae_keys = [k for k in donor if k.startswith("first_stage_model.")]
    assert vae_keys and all(torch.equal(donor[k], written[k]) for k in vae_keys)
    assert report.record["latent_scale"] == pytest.approx(
        json.loads(uninterrupted.with_suffix(".json").read_text(encoding="utf-8"))["latent_scale"], rel=1e-3)
    other = tmp_path / "other.safetensors"
    other.write_bytes(uninterrupted.read_bytes())
    with pytest.raises(BrushworkError, match="resume without --vae-from"):
        _train(toy_data, output, resume=True, vae_from=other)


def test_init_from_an_earlier_model_fine_tunes_it(toy_data: Path, tmp_path: Path, uninterrupted: Path) -> None:
    from brushwork.models.single_file import read_state_dict

    output = tmp_path / "model.safetensors"
    # One step at learning rate 0 leaves the starting weights as they are, so the file shows where stage 2 began.
    report = _train(toy_data, output, init_from=uninterrupted, overrides={"steps": 1, "lr": 0.0})
    assert report.record["init_from"] == report.record["vae_from"] == str(uninterrupted.resolve())
    donor, written = read_state_dict(uninterrupted), read_state_dict(output)
    assert donor.keys() == written.keys()
    assert all(torch.equal(donor[k], written[k]) for k in donor), "VAE, U-Net and text encoder all come from the donor"
    with pytest.raises(BrushworkError, match="drop --vae-from"):
        _train(toy_data, tmp_path / "other.safetensors", init_from=uninterrupted, vae_from=output)


@pytest.mark.parametrize("flag", ["vae_from", "init_from"])
def test_a_model_of_another_architecture_is_refused(toy_data: Path, tmp_path: Path, uninterrupted: Path, flag: str) -> None:
    output = tmp_path / "model.safetensors"
    with pytest.raises(BrushworkError, match="does not fit"):
        _train(toy_data, output, overrides={"arch": "base"}, **{flag: uninterrupted})
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a model")
    with pytest.raises(BrushworkError, match="junk.safetensors"):
        _train(toy_data, output, **{flag: junk})
    assert not state_dir_for(output).exists()  # refused before anything was written: the corrected command just runs


def test_written_model_loads_through_the_single_file_path_and_paints(uninterrupted: Path, tmp_path: Path) -> None:
    from brushwork.engine.engine import Engine
    from brushwork.models.single_file import load_single_file
    from brushwork.models.store import ModelStore
    from brushwork.recipe import Recipe

    record = json.loads(uninterrupted.with_suffix(".json").read_text(encoding="utf-8"))
    assert record["steps"] == 6 and record["seed"] == 0 and record["wall_seconds"]["total"] > 0
    loaded = load_single_file(uninterrupted)
    assert loaded.family == "sd1" and loaded.native_size == 32
    assert loaded.vae.config.scaling_factor == pytest.approx(record["latent_scale"])
    # The noise schedule it was trained with travels in the yaml, so samplers use the same sigmas.
    assert TOY_SPEC.beta_end != 0.012  # not SD's, so the assertion below proves the yaml was read
    assert loaded.scheduler_config["beta_end"] == pytest.approx(TOY_SPEC.beta_end)
    assert list(loaded.vae.config.block_out_channels) == list(TOY_SPEC.vae_channels)
    assert list(loaded.unet.config.block_out_channels) == list(TOY_SPEC.unet_channels)

    # The loaded model computes what the trained (EMA) model computes, up to the fp16 rounding of the file.
    state = torch.load(state_dir_for(uninterrupted) / "diffusion.pt", weights_only=True)
    reference = build_components(TOY_SPEC)
    reference.unet.load_state_dict(state["ema_unet"])
    reference.text_encoders[0].load_state_dict(state["ema_text_encoder"])
    ids = tokenize(reference.tokenizers[0], ["a red circle"]).long()
    context = reference.text_encoders[0](ids).last_hidden_state
    assert torch.allclose(loaded.text_encoders[0](ids).last_hidden_state, context, atol=2e-2)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    with torch.no_grad():
        expected = reference.unet(x, t, encoder_hidden_states=context).sample
        got = loaded.unet(x, t, encoder_hidden_states=context).sample
    assert torch.allclose(got, expected, atol=2e-2)

    engine = Engine(ModelStore(allow_paths=True, hash_cache=tmp_path / "hashes.json"))
    result = engine.run(Recipe(prompt="a red circle", model=str(uninterrupted), steps=2, seed=1, batch_size=2))
    assert [im.image.size for im in result.images] == [(32, 32)] * 2


def test_sample_grid_goes_through_the_engine(tmp_path: Path) -> None:
    components = build_components(TOY_SPEC)
    model = tmp_path / "toy.safetensors"
    write_model(assemble(components.vae, components.text_encoders[0], components.unet, 0.5, 32), model)
    assert (tmp_path / "toy.yaml").is_file()
    grid = sample_grid(model, tmp_path / "grid.png", prompts=("a red circle", "a blue star"), seeds=3, steps=2,
                       hash_cache=tmp_path / "hashes.json")
    from PIL import Image

    with Image.open(grid) as image:
        assert image.size == (3 * 32, 2 * 32)


# --- the commands -------------------------------------------------------------------------------------


def test_data_command_writes_the_pictures(tmp_path: Path, capsys) -> None:
    assert main(["data", "shapes", str(tmp_path / "d"), "--count", "3", "--size", "32", "--seed", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "00000.png", "00000.txt", "00001.png", "00001.txt", "00002.png", "00002.txt", "metadata.jsonl"]
    assert main(["data", "shapes", str(tmp_path / "d"), "--count", "3"]) == 2  # will not mix into a full folder
    assert main(["data", "shapes", str(tmp_path / "e"), "--count", "0"]) == 2
    assert "error:" in capsys.readouterr().err


def test_train_command_writes_model_yaml_and_record(toy_data: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "model.safetensors"
    argv = ["train", "base", "--data", str(toy_data), "-o", str(output), "--preset", "toy", "--steps", "3",
            "--vae-steps", "2", "--no-progress"]
    assert main(argv) == 0
    record = json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))
    assert (record["steps"], record["vae_steps"], record["preset"]) == (3, 2, "toy")
    assert output.is_file() and output.with_suffix(".yaml").is_file()
    assert (state_dir_for(output) / "diffusion.pt").is_file()
    assert main(argv) == 2  # the state exists: --resume or delete it
    assert main([*argv, "--resume"]) == 0  # nothing left to do: rewrites the same model


@pytest.mark.parametrize("problem", ["missing", "empty", "not safetensors", "no steps", "no threads", "no vae file"])
def test_train_command_rejects_bad_input(tmp_path: Path, problem: str, capsys) -> None:
    data = tmp_path / "data"
    if problem != "missing":
        data.mkdir()
    if problem not in ("missing", "empty"):
        make_dataset(data, 2, seed=0, size=32)
    output = tmp_path / ("model.ckpt" if problem == "not safetensors" else "model.safetensors")
    extra = {"no steps": ["--steps", "0"], "no threads": ["--threads", "0"],
             "no vae file": ["--vae-from", str(tmp_path / "absent.safetensors")]}.get(problem, [])
    argv = ["train", "base", "--data", str(data), "-o", str(output), "--preset", "toy", "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert not state_dir_for(output).exists()  # nothing half-started that a corrected command would trip over


def test_vae_crops_sit_on_the_latent_grid() -> None:
    from brushwork.train.data import seeded_generator
    from brushwork.train.vae import random_crops

    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.int32).reshape(2, 3, 16, 16)
    crops = random_crops(images, 8, seeded_generator("test", 0, 0))
    assert crops.shape == (2, 3, 8, 8)
    for image, crop in zip(images, crops):
        y, x = divmod(int(crop[0, 0, 0] - image[0, 0, 0]), 16)
        assert y % 4 == 0 and x % 4 == 0 and torch.equal(image[:, y : y + 8, x : x + 8], crop)
