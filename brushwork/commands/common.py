"""Options several commands share."""

from __future__ import annotations

import argparse
from pathlib import Path

from brushwork.errors import BrushworkError


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", dest="models_dir", type=Path, default=None, help="A1111-style models folder")
    parser.add_argument(
        "--allow-pickle", dest="allow_pickle", action="store_true",
        help="allow .ckpt/.pt files (loaded with torch.load(weights_only=True)); off by default since pickles can run code",
    )


def parse_lora(text: str) -> dict[str, object]:
    """`--lora NAME[:WEIGHT[:UNET_WEIGHT]]` as LoraUse fields."""
    name, *weights = text.split(":")
    if not name or len(weights) > 2 or not all(_is_number(weight) for weight in weights):
        raise BrushworkError(f"--lora: expected NAME, NAME:WEIGHT or NAME:WEIGHT:UNET_WEIGHT, got {text!r}")
    fields: dict[str, object] = {"name": name}
    if weights:
        fields["weight"] = float(weights[0])
    if len(weights) > 1:
        fields["unet_weight"] = float(weights[1])
    return fields


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
