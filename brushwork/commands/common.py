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


# `--control` keys -> ControlUnit fields, and the short words it takes for modes.
CONTROL_KEYS = {"model": "model", "image": "image", "module": "module", "weight": "weight", "start": "guidance_start",
                "end": "guidance_end", "mode": "control_mode", "resize": "resize_mode", "res": "processor_res",
                "a": "threshold_a", "b": "threshold_b", "pixel-perfect": "pixel_perfect"}
CONTROL_MODE_WORDS = {"balanced": "Balanced", "prompt": "My prompt is more important",
                      "control": "ControlNet is more important"}
CONTROL_RESIZE_WORDS = {"just": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}


def parse_control(text: str) -> dict[str, object]:
    """`--control model=NAME,image=PATH[,module=canny][,weight=1][,start=0][,end=1][,mode=balanced|prompt|control]
    [,resize=just|crop|fill][,res=512][,a=LOW][,b=HIGH][,pixel-perfect]` as ControlUnit fields."""
    fields: dict[str, object] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        key, has_value, value = part.partition("=")
        field = CONTROL_KEYS.get(key.strip().lower())
        if field is None:
            raise BrushworkError(f"--control: unknown key {key!r} in {text!r}; keys: {', '.join(CONTROL_KEYS)}")
        value = value.strip()
        if field == "pixel_perfect":
            fields[field] = not has_value or value.lower() in ("1", "true", "yes", "on")
        elif field == "control_mode":
            fields[field] = CONTROL_MODE_WORDS.get(value.lower(), value)
        elif field == "resize_mode":
            fields[field] = CONTROL_RESIZE_WORDS.get(value.lower(), value)
        else:
            fields[field] = value
    if "model" not in fields:
        raise BrushworkError(f"--control: give the unit's model, e.g. model=control_canny,image=edges.png (got {text!r})")
    return fields


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
