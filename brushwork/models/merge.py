"""A1111's checkpoint merger, and LoRAs baked into a checkpoint.

    Weighted sum      A · (1 − M) + B · M
    Add difference    A + (B − C) · M
    No interpolation  A (to bake in a VAE or LoRAs only)

Every weight of the U-Net, VAE and text encoders is merged, as A1111 does (its keys all contain "model").
When A is an inpainting model and B an ordinary one, the U-Net's first convolution merges only its first four
input channels and keeps A's mask channels, so the result is an inpainting model (A1111's rule); the other way
round is refused, as in A1111. The result is written as one single-file `.safetensors` in the ldm layout that
A1111, ComfyUI and brushwork read, with A1111's `sd_merge_recipe` metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from brushwork.errors import BrushworkError
from brushwork.models.components import Components
from brushwork.models.families import family_display_name

METHODS = ("Weighted sum", "Add difference", "No interpolation")


@dataclass(frozen=True)
class MergeInput:
    """A checkpoint taking part: its loaded modules, and its name and sha256 for the metadata."""

    components: Components
    name: str
    sha256: str


def merge_into(primary: Components, secondary: Components | None, tertiary: Components | None, method: str,
               multiplier: float, *, progress: Callable[[Iterator], Iterator] = lambda items: items) -> None:
    """Merge B (and C) into A's weights, in place."""
    if method not in METHODS:
        raise BrushworkError(f"unknown merge method {method!r}; choose one of: {', '.join(METHODS)}")
    if method == "No interpolation":
        return
    needed = [secondary] + ([tertiary] if method == "Add difference" else [])
    if any(model is None for model in needed):
        raise BrushworkError(f"{method} needs {'three' if method == 'Add difference' else 'two'} checkpoints")
    for other in needed:
        if other.family != primary.family:
            raise BrushworkError(f"cannot merge an {family_display_name(other.family)} checkpoint into an "
                                 f"{family_display_name(primary.family)} one: the layers differ")
    if secondary.inpaint and not primary.inpaint:
        raise BrushworkError("when merging an inpainting model with an ordinary one, the inpainting model must be "
                             "the first (A), as in A1111")
    pairs = list(_parameter_pairs(primary, needed))
    with torch.no_grad():
        for name, a, (b, *rest) in progress(pairs):
            c = rest[0] if rest else None
            if c is not None and c.shape != b.shape:
                raise BrushworkError(f"cannot merge {name}: B and C differ ({tuple(b.shape)} and {tuple(c.shape)}); "
                                     "add difference takes B and C of the same kind (both inpainting or neither)")
            if a.shape != b.shape:
                if a.dim() == 4 and a.shape[1] == 9 and b.shape[1] == 4 and a.shape[0] == b.shape[0]:
                    a[:, :4] = _combine(a[:, :4].float(), b.float(), None if c is None else c.float(), method,
                                        multiplier).to(a.dtype)
                    continue
                raise BrushworkError(f"cannot merge {name}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
            a.copy_(_combine(a.float(), b.float(), None if c is None else c.float(), method, multiplier).to(a.dtype))


def _combine(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, method: str, multiplier: float) -> torch.Tensor:
    if method == "Weighted sum":
        return a * (1 - multiplier) + b * multiplier
    return a + (b - c) * multiplier


def _parameter_pairs(primary: Components, others: Sequence[Components]) -> Iterator[tuple[str, torch.Tensor, list]]:
    """(name, A's tensor, the others' tensors) for every floating-point weight of the merged modules."""
    for label, module in _modules(primary):
        others_by_name = [dict(_modules(other))[label].state_dict() for other in others]
        for name, tensor in module.state_dict(keep_vars=True).items():
            if tensor.is_floating_point() and all(name in state for state in others_by_name):
                yield f"{label}.{name}", tensor.data, [state[name] for state in others_by_name]


def _modules(components: Components) -> list[tuple[str, nn.Module]]:
    encoders = [(f"text_encoder_{index}", encoder) for index, encoder in enumerate(components.text_encoders)]
    return [("unet", components.unet), ("vae", components.vae), *encoders]


def merge_metadata(inputs: Sequence[MergeInput], method: str, multiplier: float, *, vae: str | None,
                   loras: Sequence[str], half: bool, inpaint: bool) -> dict[str, str]:
    """A1111's merge metadata: `sd_merge_recipe` (how) and `sd_merge_models` (from what, by sha256)."""
    hashes = [model.sha256 for model in inputs] + [None] * (3 - len(inputs))
    recipe = {
        "type": "brushwork", "primary_model_hash": hashes[0], "secondary_model_hash": hashes[1],
        "tertiary_model_hash": hashes[2], "interp_method": method, "multiplier": multiplier, "save_as_half": half,
        "bake_in_vae": vae or "None", "loras": list(loras), "is_inpainting": inpaint,
    }
    models = {model.sha256: {"name": model.name, "legacy_hash": None, "sd_merge_recipe": None} for model in inputs}
    return {"format": "pt", "sd_merge_recipe": json.dumps(recipe), "sd_merge_models": json.dumps(models)}
