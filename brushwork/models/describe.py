"""One-line descriptions of model files for listings, read from the file header alone (no weights)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from brushwork.errors import ModelLoadError
from brushwork.models.detect import detect
from brushwork.models.families import family_display_name



def header_shapes(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file as shape-only meta tensors, read from its JSON header."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100_000_000:
            raise ModelLoadError(f"{path.name}: not a safetensors file (header too large)")
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return {key: torch.empty(info["shape"], device="meta") for key, info in header.items()}


def describe_file(path: Path, kind: str, *, allow_pickle: bool = False) -> str:
    """E.g. "SD 1.x", "SDXL inpainting", "diffusers folder (SD 1.x)", "LoRA", "(unreadable: ...)"."""
    if path.is_dir():
        index = json.loads((path / "model_index.json").read_text())
        return f"diffusers {index.get('_class_name', 'pipeline')}"
    if path.suffix.lower() != ".safetensors":
        return "pickle (needs --allow-pickle)" if not allow_pickle else "pickle"
    try:
        shapes = header_shapes(path)
    except (OSError, ValueError, struct.error, ModelLoadError) as error:
        return f"unreadable ({error})"
    if kind != "checkpoint":
        return {"vae": "VAE", "lora": "LoRA", "controlnet": "ControlNet", "embedding": "embedding", "upscaler": "upscaler"}[kind]
    try:
        detection = detect(shapes)
    except ModelLoadError as error:
        return f"unknown ({str(error).split(':')[0]})"
    name = family_display_name(detection.family)
    return name + (" inpainting" if detection.inpaint else "")
