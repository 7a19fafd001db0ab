"""`train_base`: the whole recipe for brushwork's embedded model, from a data folder to a checkpoint file.

    1. read the pictures and captions            (data.load_folder)
    2. train the VAE                             (vae.train_vae)                  stage 1
    3. encode every picture once, set the scale   (vae.encode_dataset)
    4. train text encoder + U-Net                (diffusion.DiffusionTrainer)     stage 2
    5. write model.safetensors (+ .yaml, .json)  (export.write_model)

Stage 1 can instead take the VAE of an earlier model file (`vae_from`), as SD 2 kept SD 1's VAE: a new
U-Net and text encoder then train on the same latents without spending the VAE's hour again. `init_from`
goes further and fine-tunes an earlier model: its VAE is kept, and its U-Net and text encoder are where
stage 2 starts, trained with this run's schedule and prediction type.

Each stage checkpoints into the state folder beside the output (`state.TrainingState`) so an
interrupted run continues with `resume=True` exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from brushwork import __version__
from brushwork.errors import BrushworkError
from brushwork.train import settings as settings_module
from brushwork.train.data import ShapesData, load_folder, tokenize
from brushwork.train.diffusion import DiffusionTrainer, LatentSet
from brushwork.train.export import assemble, sample_grid, write_model
from brushwork.train.layout import LayoutTargets, object_masks, position_labels
from brushwork.train.loop import LoopHooks, run_steps
from brushwork.train.models import ModelSpec, build_components, count_parameters
from brushwork.train.settings import TrainSettings
from brushwork.train.state import TrainingState, state_dir_for
from brushwork.train.vae import encode_dataset, latent_scale, reconstruct, train_vae

log = logging.getLogger(__name__)

# Settings a resumed run may change: how long it goes on, and how often it reports.
CHANGEABLE_ON_RESUME = ("steps", "sample_every", "checkpoint_every")
VAE_CHECK_PICTURES = 256  # reconstructions judged by the shapes checker after stage 1


@dataclass
class TrainReport:
    """What `train_base` did; also written as the `.json` training record beside the model."""

    output: Path
    record: dict[str, Any] = field(default_factory=dict)


def train_base(
    data_dir: str | Path,
    output: str | Path,
    *,
    preset: str | None = "quick",
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    vae_from: str | Path | None = None,
    init_from: str | Path | None = None,
    command: str = "",
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[str, int, float], None] | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> TrainReport:
    """Train the base model from the pictures in `data_dir` and write it to `output` (.safetensors).

    `preset` and `overrides` (TrainSettings fields; None values are ignored) choose the settings of a new
    run; a resumed run keeps its saved settings and accepts only changes of CHANGEABLE_ON_RESUME.
    """
    started = time.perf_counter()
    output = Path(output).expanduser()
    if output.suffix.lower() != ".safetensors":
        raise BrushworkError(f"the output must be a .safetensors file (got {output.name})")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    state = TrainingState(state_dir_for(output))
    sources = _model_sources(vae_from, init_from)
    settings, resumed = _settings_for(state, preset, overrides, resume, say)
    if resumed:
        sources = _same_sources(state.read_run(), sources)
    vae_from, init_from = sources["vae_from"], sources["init_from"]
    data = load_folder(data_dir, settings.max_images)
    spec = replace(settings.spec, image_size=data.size)
    run = {
        "brushwork": __version__,
        "preset": preset if not resumed else state.read_run().get("preset"),
        "settings": settings.to_dict(),
        "spec": spec.to_dict(),
        "data": {"folder": str(Path(data_dir).expanduser().resolve()), "images": len(data), "size": data.size,
                 "fingerprint": data.fingerprint},
        "command": command,
        "vae_from": vae_from,
        "init_from": init_from,
    }
    if resumed:
        _check_same_data(state.read_run(), run)
    # The model files' weights go in before anything is written, so a file that does not fit leaves no state.
    components = build_components(spec, seed=settings.seed)
    if vae_from is not None:
        parts = {"VAE": components.vae}
        if init_from is not None:
            parts.update({"U-Net": components.unet, "text encoder": components.text_encoders[0]})
        _load_weights(vae_from, "--init-from" if init_from else "--vae-from", parts)
    state.write_run(run)
    timings: dict[str, float] = {"load": time.perf_counter() - started}
    say(f"{len(data)} pictures of {data.size}x{data.size} from {data_dir}; training state in {state.folder}")
    if init_from is not None:
        say(f"U-Net and text encoder: starting from {init_from}")
    stop = should_stop
    hooks = LoopHooks(checkpoint=lambda done: None, checkpoint_every=settings.checkpoint_every,
                      should_stop=stop, on_step=on_step, progress=progress)

    # --- stage 1: VAE, then the data set encoded once ---------------------------------------------------
    latents, vae_record = _stage_vae(components, data, settings, state, hooks, timings, say, vae_from)

    # --- stage 2: text encoder + U-Net -------------------------------------------------------------------
    tokenizer = components.tokenizers[0]
    empty_ids = tokenize(tokenizer, [""])
    trainer = DiffusionTrainer(
        components.unet, components.text_encoders[0], latents, empty_ids, components.scheduler_config, settings,
        _layout_targets(data_dir, data, latents, settings, say),
    )
    saved = state.load("diffusion.pt")
    start, elapsed_before = 0, 0.0
    if saved is not None:
        start, elapsed_before = trainer.load_state_dict(saved), float(saved.get("elapsed", 0.0))
        say(f"resuming the diffusion stage at step {start} of {settings.steps}")
    session_started = time.perf_counter()

    def checkpoint(done: int) -> None:
        payload = trainer.state_dict(done)
        payload["elapsed"] = elapsed_before + time.perf_counter() - session_started
        state.save("diffusion.pt", payload)

    def sample(done: int) -> None:
        snapshot = state.path("snapshot.safetensors")
        write_model(_ema_components(components, trainer, latents.scale, spec), snapshot)
        grid = sample_grid(snapshot, state.path("samples") / f"step-{done:06d}.png", seed=settings.seed,
                           hash_cache=state.path("hashes.json"))
        log.info("sample grid: %s", grid)

    stage2 = run_steps(
        "diffusion", start, settings.steps, trainer.step,
        dataclasses.replace(hooks, checkpoint=checkpoint, sample=sample, sample_every=settings.sample_every),
    )
    timings["diffusion"] = stage2.seconds
    diffusion_total = elapsed_before + stage2.seconds

    # --- the model file, its yaml and the training record ----------------------------------------------
    final = _ema_components(components, trainer, latents.scale, spec)
    record = {
        **run,
        "seed": settings.seed,
        "vae_steps": settings.vae_steps,
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "resumed": resumed,
        "latent_scale": latents.scale,
        "parameters": {
            "vae": count_parameters(final.vae),
            "text_encoder": count_parameters(final.text_encoders[0]),
            "unet": count_parameters(final.unet),
        },
        "vae_quality": vae_record,
        "final_loss": _tail_mean(stage2.losses),
        "steps_per_second": {
            "vae": timings.get("vae_steps_per_second"),
            "diffusion": stage2.steps_per_second if stage2.losses else None,
        },
        "wall_seconds": {
            **{k: round(v, 1) for k, v in timings.items() if not k.endswith("per_second")},
            "vae_all_sessions": round(timings.get("vae_all_sessions", 0.0), 1),
            "diffusion_all_sessions": round(diffusion_total, 1),
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
    }
    metadata = {
        "brushwork.training": json.dumps(
            {"command": command, "seed": settings.seed, "vae_steps": settings.vae_steps, "steps": settings.steps,
             "images": len(data), "data_fingerprint": data.fingerprint}, sort_keys=True
        ),
        "modelspec.title": "brushwork shapes",
        "modelspec.architecture": "stable-diffusion-v1",
    }
    size = write_model(final, output, metadata=metadata)
    record["file_bytes"] = size
    record["wall_seconds"]["total"] = round(time.perf_counter() - started, 1)
    output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    say(f"wrote {output} ({size / 1e6:.1f} MB), {output.with_suffix('.yaml').name} and {output.with_suffix('.json').name}")
    return TrainReport(output=output, record=record)


def _settings_for(
    state: TrainingState, preset: str | None, overrides: dict[str, Any], resume: bool, say: Callable[[str], None]
) -> tuple[TrainSettings, bool]:
    """The settings of this run, and whether it continues a saved one."""
    if not state.exists():
        if resume:
            say(f"nothing to resume in {state.folder}; starting a new run")
        return settings_module.resolve(preset or "quick", **overrides), False
    if not resume:
        raise BrushworkError(
            f"{state.folder} holds an earlier training run for this output; pass --resume to continue it, "
            "or delete that folder to start over"
        )
    saved_run = state.read_run()
    saved = TrainSettings.from_dict(saved_run.get("settings", {}))
    if preset is not None and saved_run.get("preset") not in (None, preset):
        raise BrushworkError(f"the saved run used --preset {saved_run.get('preset')}, not {preset}; resume it with that preset")
    changed = {k: v for k, v in overrides.items() if getattr(saved, k) != v}
    fixed = sorted(k for k in changed if k not in CHANGEABLE_ON_RESUME)
    if fixed:
        detail = ", ".join(f"{k}: saved {getattr(saved, k)!r}, given {changed[k]!r}" for k in fixed)
        raise BrushworkError(f"cannot change these settings when resuming ({detail}); only "
                             f"{', '.join(CHANGEABLE_ON_RESUME)} may change")
    if "steps" in changed:
        say(f"training now runs to {changed['steps']} steps (was {saved.steps}); the learning-rate schedule follows")
    return replace(saved, **changed).validate(), True


def _check_same_data(saved_run: dict[str, Any], run: dict[str, Any]) -> None:
    before, now = saved_run.get("data", {}), run["data"]
    if before.get("fingerprint") not in (None, now["fingerprint"]):
        raise BrushworkError(
            f"the data in {now['folder']} differs from the run being resumed ({before.get('images')} pictures from "
            f"{before.get('folder')}); resume with the same data"
        )


def _model_sources(vae_from: str | Path | None, init_from: str | Path | None) -> dict[str, str | None]:
    """The absolute paths of the model files a new run takes weights from; --init-from brings its own VAE."""
    for flag, given in (("--vae-from", vae_from), ("--init-from", init_from)):
        if given is not None and not Path(given).expanduser().is_file():
            raise BrushworkError(f"{flag}: no model file at {given}")
    vae_from, init_from = (str(Path(p).expanduser().resolve()) if p is not None else None for p in (vae_from, init_from))
    if init_from is not None and vae_from not in (None, init_from):
        raise BrushworkError("--init-from keeps that model's own VAE; drop --vae-from")
    return {"init_from": init_from, "vae_from": init_from or vae_from}


def _same_sources(saved_run: dict[str, Any], given: dict[str, str | None]) -> dict[str, str | None]:
    """A resumed run keeps the model files it started from; naming others is an error."""
    saved = {key: saved_run.get(key) for key in given}
    for key, path in given.items():
        if path is not None and path != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise BrushworkError(f"the run being resumed was started with {flag} {saved[key] or '(none)'}, not "
                                 f"{path}; resume without {flag}")
    return saved


def _stage_vae(
    components, data: ShapesData, settings: TrainSettings, state: TrainingState, hooks: LoopHooks,
    timings: dict[str, float], say: Callable[[str], None], vae_from: str | None,
) -> tuple[LatentSet, dict[str, Any]]:
    """Train (or restore, or take from `vae_from`) the VAE; return the encoded data set and a note on its quality."""
    vae = components.vae
    cached = state.load("latents.pt")
    if cached is not None:
        saved = state.load("vae.pt")
        if saved is None:
            raise BrushworkError(f"{state.folder} has latents.pt but no vae.pt; delete the folder to start over")
        vae.load_state_dict(saved["vae"])
        vae.eval()
        timings["vae_all_sessions"] = float(saved.get("elapsed", 0.0))
        return LatentSet.from_dict(cached["latents"]), cached.get("vae_quality", {})

    if vae_from is not None:  # its weights are in already (train_base)
        vae.eval()
        state.save("vae.pt", {"step": 0, "vae": vae.state_dict(), "elapsed": 0.0, "from": vae_from})
        say(f"VAE: taken from {vae_from}; stage 1 skipped")
    else:
        saved = state.load("vae.pt")
        if saved is not None and int(saved["step"]) < settings.vae_steps:
            say(f"resuming the VAE stage at step {saved['step']} of {settings.vae_steps}")
        result = train_vae(vae, data, settings, state, hooks)
        timings["vae"] = result.seconds
        timings["vae_all_sessions"] = result.elapsed_total
        if result.losses:
            timings["vae_steps_per_second"] = result.steps_per_second

    encode_started = time.perf_counter()
    mean = encode_dataset(vae, data.images)
    ids = tokenize(components.tokenizers[0], data.captions)
    latents = LatentSet(mean=mean, ids=ids, scale=latent_scale(mean))
    timings["encode"] = time.perf_counter() - encode_started
    quality = vae_quality(vae, data)
    say(f"VAE: reconstruction L1 {quality['l1']:.4f}, the checker reads {quality['checker_pass']:.1%} of "
        f"{quality['pictures']} reconstructions as their captions say; latent scale {latents.scale:.4f}")
    state.save("latents.pt", {"latents": latents.to_dict(), "vae_quality": quality})
    return latents, quality


def _load_weights(path: str, flag: str, targets: dict[str, torch.nn.Module]) -> None:
    """Copy the named parts ("VAE", "U-Net", "text encoder") of the model file at `path` into `targets`."""
    from brushwork.models.single_file import load_single_file

    donor = load_single_file(path)  # an unreadable file is a BrushworkError naming it
    parts = {"VAE": donor.vae, "U-Net": donor.unet, "text encoder": donor.text_encoders[0]}
    for name, module in targets.items():
        try:
            module.load_state_dict({k: v.float() for k, v in parts[name].state_dict().items()})
        except RuntimeError as error:
            detail = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
            raise BrushworkError(f"{flag}: the {name} in {Path(path).name} does not fit the one being trained "
                                 f"({detail})") from error


def vae_quality(vae, data: ShapesData, count: int = VAE_CHECK_PICTURES) -> dict[str, Any]:
    """Mean absolute error (0..1 scale) of reconstructions, and how many the shapes checker still passes."""
    from brushwork.shapes import check

    images = data.images[:count]
    rebuilt = reconstruct(vae, images)
    l1 = float((rebuilt.float() - images.float()).abs().mean() / 255.0)
    passed = [
        check(np.ascontiguousarray(picture.permute(1, 2, 0).numpy()), caption).passed
        for picture, caption in zip(rebuilt, data.captions[:count])
    ]
    return {"l1": round(l1, 5), "checker_pass": float(np.mean(passed)), "pictures": len(passed)}


def _layout_targets(data_dir: str | Path, data: ShapesData, latents: LatentSet, settings: TrainSettings,
                    say: Callable[[str], None]) -> LayoutTargets | None:
    """Position classes and object masks for the layout settings; None when all of them are off."""
    if not (settings.layout_fraction or settings.foreground_weight or settings.position_loss_weight):
        return None
    masks = object_masks(data_dir, data.names, latents.mean.shape[-1]) if settings.foreground_weight else None
    if settings.foreground_weight and masks is None:
        say(f"{data_dir} has no metadata.jsonl, so object pixels get no extra loss weight")
    layout = LayoutTargets(positions=position_labels(data.captions), masks=masks)
    say(f"{len(layout.positioned)} of {len(data)} captions name a position")
    return layout


def _ema_components(components, trainer: DiffusionTrainer, scale: float, spec: ModelSpec):
    return assemble(components.vae, trainer.ema_text.shadow, trainer.ema_unet.shadow, scale, spec.image_size,
                    spec.beta_end, spec.prediction_type)


def _tail_mean(losses: list[float], count: int = 100) -> float | None:
    tail = losses[-count:]
    return float(sum(tail) / len(tail)) if tail else None
