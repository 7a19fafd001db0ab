"""The training state folder beside the output (`model.safetensors` -> `model.train/`), for --resume.

    run.json        settings and data fingerprint; a resumed run must match them
    vae.pt          stage 1: step, VAE weights, optimizer moments
    latents.pt      the data set encoded by the finished VAE (latents, token ids, scale)
    diffusion.pt    stage 2: step, U-Net and text encoder weights, their EMA, optimizer moments
    samples/        sample grids made through the Engine while training
    snapshot.*      the model file those grids were made from

Random numbers need no saving: every step draws from a generator seeded by (seed, stage, step) and
batches come from per-epoch permutations fixed by (seed, epoch). Saving the weights and the optimizer
at a step is therefore enough for a resumed run to continue bit for bit as an uninterrupted one would
(same machine, same thread count).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from brushwork.errors import BrushworkError


def state_dir_for(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".train")


class TrainingState:
    """Reads and writes the files of one state folder; every write is atomic (temp file, then rename)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / name

    def exists(self) -> bool:
        return self.path("run.json").is_file()

    # -- run.json -----------------------------------------------------------------------------------

    def write_run(self, run: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.path("run.json"), json.dumps(run, indent=2, sort_keys=True) + "\n")

    def read_run(self) -> dict[str, Any]:
        try:
            return json.loads(self.path("run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise BrushworkError(f"cannot read the training state {self.path('run.json')}: {error}") from error

    # -- tensors ------------------------------------------------------------------------------------

    def save(self, name: str, payload: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(name)
        partial = target.with_name(target.name + ".partial")
        torch.save(payload, partial)
        os.replace(partial, target)

    def load(self, name: str) -> dict[str, Any] | None:
        """The saved payload, or None if there is none. Tensors are cloned into fresh, aligned memory."""
        target = self.path(name)
        if not target.is_file():
            return None
        try:
            payload = torch.load(target, map_location="cpu", weights_only=True)
        except Exception as error:
            raise BrushworkError(f"the training state {target} is unreadable ({error}); delete it to redo that stage") from error
        return _clone_tensors(payload)


def _clone_tensors(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone_tensors(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone_tensors(v) for v in value]
    return value


def _atomic_write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
