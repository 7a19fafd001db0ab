"""LoRA and LyCORIS files as weight patches.

One file holds, per layer it changes, the factors of a weight delta ΔW, in one of the kinds people share:

    LoRA / LoCon   ΔW = up · down · α/r            (conv: flattened; with `lora_mid`, a Tucker core)
    LoHa           ΔW = (w1a · w1b) ⊙ (w2a · w2b) · α/r      (Hadamard product; `hada_t1/t2`: Tucker cores)
    LoKr           ΔW = w1 ⊗ w2 · α/r              (Kronecker product; each side whole or as a · b)
    full (diff)    ΔW = diff                       (and `diff_b` for the bias)

r is the rank (the inner size of the factors); without `alpha` the scale is 1. A layer is patched to
W + m·ΔW, m being the job's multiplier for the text encoders or the U-Net. DoRA rescales the merged weight's
rows or columns to stored magnitudes. kohya/LyCORIS files (`dora_scale`, [out, 1, ...] per output row or
[1, in, ...] per input column): D = (W + ΔW) · magnitude / ‖W + ΔW‖, applied as W + m·(D − W), ComfyUI's rule
(m = 0 gives W back; LyCORIS's own rescales at full strength and gives W + ΔW at m = 0). peft files
(`lora_magnitude_vector`, always per output row): magnitude · (W + m·ΔW) / ‖W + m·ΔW‖, peft's own formula.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch

from brushwork.engine.embeddings import Embedding, split_bundled
from brushwork.errors import ModelLoadError
from brushwork.models.components import Components
from brushwork.models.families import FAMILIES, family_display_name
from brushwork.models.patches.lora_keys import Target, lora_targets, normalise_module_key
from brushwork.models.patches.patcher import ModelPatcher, WeightChange
from brushwork.models.single_file import read_metadata, read_state_dict

# A key's last part -> the factor it holds. Longest first, so `.lora_down.weight` is not read as `.weight`.
_PARTS = {
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".lora_mid.weight": "mid",
    ".lora_A.weight": "down", ".lora_B.weight": "up",  # peft
    ".lora.down.weight": "down", ".lora.up.weight": "up",  # diffusers' older layout
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
    ".down.weight": "down", ".up.weight": "up",  # diffusers' processor layout: `….processor.to_q_lora.down.weight`
    ".hada_w1_a": "hada_w1_a", ".hada_w1_b": "hada_w1_b", ".hada_w2_a": "hada_w2_a", ".hada_w2_b": "hada_w2_b",
    ".hada_t1": "hada_t1", ".hada_t2": "hada_t2",
    ".lokr_w1": "lokr_w1", ".lokr_w1_a": "lokr_w1_a", ".lokr_w1_b": "lokr_w1_b",
    ".lokr_w2": "lokr_w2", ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b", ".lokr_t2": "lokr_t2",
    ".diff": "diff", ".diff_b": "diff_b",
    ".alpha": "alpha", ".dora_scale": "dora_scale", ".lora_magnitude_vector": "magnitude",
}
_SUFFIXES = sorted(_PARTS, key=len, reverse=True)
_CROSS_ATTENTION_KEY = re.compile(r"attn2[._]to_k")


@dataclass
class LoraLayer:
    """The factors one file holds for one layer of the base model."""

    target: Target
    parts: dict[str, torch.Tensor]

    @property
    def kind(self) -> str:
        if "diff" in self.parts or "diff_b" in self.parts:
            return "full"
        if "hada_w1_a" in self.parts:
            return "LoHa"
        if any(part.startswith("lokr_") for part in self.parts):
            return "LoKr"
        return "LoRA"

    def delta(self, shape: torch.Size, factor: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
        """factor · ΔW for a weight of `shape`, in float32 on `device` (the weight's), scale included."""
        p = {name: tensor.to(device, torch.float32) for name, tensor in self.parts.items()}
        kind = self.kind
        if kind == "full":
            return p["diff"].reshape(shape) * factor
        if kind == "LoRA":
            down, up = p["down"], p["up"]
            delta = _tucker(p["mid"], down, up) if "mid" in p else up.flatten(1) @ down.flatten(1)
            # One scalar, in place: peft's order of operations, so a fused peft LoRA matches bit for bit.
            return delta.mul_(self._scale(down.shape[0]) * factor).reshape(shape)
        if kind == "LoHa":
            rank = p["hada_w1_b"].shape[0]
            if "hada_t1" in p:
                # With Tucker cores LyCORIS stores the `a` factors as [r, out].
                w1 = _tucker(p["hada_t1"], p["hada_w1_b"], p["hada_w1_a"].transpose(0, 1))
                w2 = _tucker(p["hada_t2"], p["hada_w2_b"], p["hada_w2_a"].transpose(0, 1))
            else:
                w1, w2 = p["hada_w1_a"] @ p["hada_w1_b"], p["hada_w2_a"] @ p["hada_w2_b"]
            return (w1 * w2 * (self._scale(rank) * factor)).reshape(shape)
        # LoKr: each side whole, or as a product (then the rank is the inner size and alpha applies).
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        if "lokr_w2" in p:
            w2 = p["lokr_w2"]
        elif "lokr_t2" in p:
            w2 = _tucker(p["lokr_t2"], p["lokr_w2_b"], p["lokr_w2_a"].transpose(0, 1))
        else:
            w2 = p["lokr_w2_a"] @ p["lokr_w2_b"]
        ranks = [p[name].shape[0] for name in ("lokr_w1_b", "lokr_w2_b") if name in p]
        while w1.dim() < w2.dim():
            w1 = w1.unsqueeze(-1)
        return (torch.kron(w1, w2) * ((self._scale(ranks[0]) if ranks else 1.0) * factor)).reshape(shape)

    def _scale(self, rank: int) -> float:
        alpha = self.parts.get("alpha")
        return 1.0 if alpha is None else float(alpha) / rank

    def change(self, multiplier: float, name: str) -> WeightChange:
        """The weight's (or, for `bias`, the bias's) new value from its current one at this multiplier."""
        if name == "bias":
            diff_b = self.parts["diff_b"]
            return lambda bias: bias.add_(multiplier * diff_b.to(bias.device, torch.float32).reshape(bias.shape))
        def patched(weight: torch.Tensor) -> torch.Tensor:
            if "magnitude" in self.parts:  # peft's DoRA
                merged = weight + self.delta(weight.shape, multiplier, weight.device)
                return merged * (self._magnitude(weight, "magnitude") / (_norm(merged, True) + 1e-6))
            if "dora_scale" not in self.parts:
                return weight.add_(self.delta(weight.shape, multiplier, weight.device))
            full = weight + self.delta(weight.shape, 1.0, weight.device)
            on_output = self._dora_on_output(weight.shape)
            decomposed = full * (self._magnitude(weight, "dora_scale") / (_norm(full, on_output) + 1e-6))
            return weight + multiplier * (decomposed - weight)

        return patched

    def _dora_on_output(self, shape: torch.Size) -> bool:
        """kohya/LyCORIS `dora_scale`: [out, 1, ...] scales output rows, [1, in, ...] input columns."""
        scale = self.parts["dora_scale"]
        return scale.dim() >= 1 and scale.shape[0] == shape[0] and scale.numel() == shape[0] and (
            len(shape) < 2 or scale.dim() < 2 or scale.shape[1] == 1)

    def _magnitude(self, weight: torch.Tensor, part: str) -> torch.Tensor:
        """The stored magnitudes, shaped to broadcast over `weight`'s rows or columns."""
        magnitude = self.parts[part].to(weight.device, torch.float32)
        ones = [1] * (weight.dim() - 1)
        if part == "magnitude" or self._dora_on_output(weight.shape):  # peft: [out] or [1, out, 1, 1]: rows
            return magnitude.reshape(weight.shape[0], *ones)
        return magnitude.reshape(1, weight.shape[1], *ones[1:])


@dataclass
class LoraFile:
    """A parsed LoRA/LyCORIS file, matched against one checkpoint's layers."""

    name: str
    path: Path
    layers: list[LoraLayer]
    embeddings: tuple[Embedding, ...] = ()  # bundled with it (pivotal tuning's new words): known while it is used

    @property
    def kinds(self) -> set[str]:
        return {layer.kind for layer in self.layers}

    def changes(self, te_multiplier: float, unet_multiplier: float) -> Iterator[tuple[str, str, WeightChange]]:
        for layer in self.layers:
            module, path = layer.target
            multiplier = unet_multiplier if module == "unet" else te_multiplier
            if multiplier == 0:
                continue
            if "diff_b" in layer.parts:
                yield module, f"{path}.bias", layer.change(multiplier, "bias")
            if "diff_b" not in layer.parts or "diff" in layer.parts:
                yield module, f"{path}.weight", layer.change(multiplier, "weight")


@dataclass
class LoraPatch:
    """A LoRA applied at a text-encoder and a U-Net multiplier: a `WeightPatch` for the model patcher."""

    lora: LoraFile
    te_multiplier: float
    unet_multiplier: float

    def changes(self) -> Iterator[tuple[str, str, WeightChange]]:
        return self.lora.changes(self.te_multiplier, self.unet_multiplier)


def load_lora(path: Path, components: Components, *, allow_pickle: bool = False, name: str | None = None) -> LoraFile:
    """Read a LoRA/LyCORIS file and match every layer it changes to one of `components`'.

    A file with layers that match nothing (made for another model family, or another kind of file) is
    refused, naming the file, the first keys that match nothing and, where the file shows it, its family."""
    embeddings, state = split_bundled(path, read_state_dict(path, allow_pickle=allow_pickle))
    targets = lora_targets(components)
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            unknown.append(key)
            continue
        grouped.setdefault(key[: -len(suffix)], {})[_PARTS[suffix]] = tensor
    layers, unmatched = [], []
    for module_key, parts in grouped.items():
        key = normalise_module_key(module_key)
        target = targets.get(key) or targets.get("unet." + key)
        if target is None:
            unmatched.append(module_key)
        elif not ({"down", "up"} <= parts.keys() or "diff" in parts or "diff_b" in parts or "hada_w1_a" in parts
                  or any(part.startswith("lokr_w1") for part in parts)):
            raise ModelLoadError(f"LoRA {path.name}: layer {module_key} has only {sorted(parts)}; the file is incomplete")
        else:
            layers.append(LoraLayer(target, parts))
    if unknown or unmatched:
        raise ModelLoadError(_mismatch(path, components, state, unknown, unmatched))
    if not layers:
        raise ModelLoadError(f"LoRA {path.name} holds no layers")
    _check_shapes(path, layers, components)
    widths = [encoder.config.hidden_size for encoder in components.text_encoders]
    misfits = [embedding.name for embedding in embeddings if not embedding.fits(widths)]
    if misfits:
        raise ModelLoadError(f"LoRA {path.name}: its bundled embedding {misfits[0]!r} was made for other text encoders")
    return LoraFile(name or path.stem, path, layers, tuple(embeddings))


def _mismatch(path: Path, components: Components, state: Mapping[str, torch.Tensor],
              unknown: list[str], unmatched: list[str]) -> str:
    if unknown:
        first = ", ".join(unknown[:3])
        return (f"LoRA {path.name}: {len(unknown)} keys of a kind brushwork does not know (first: {first}); "
                "it reads LoRA, LoCon, LoHa, LoKr, full-diff and DoRA files in kohya, LyCORIS or diffusers layout")
    first = ", ".join(unmatched[:3])
    made_for = _family_of(path, state)
    model = family_display_name(components.family)
    context = components.unet.config.cross_attention_dim
    return (f"LoRA {path.name}: {len(unmatched)} of its layers match nothing in this {model} model "
            f"(cross-attention width {context}; first: {first})"
            + (f"; the file was made for {made_for}" if made_for else ""))


def _family_of(path: Path, state: Mapping[str, torch.Tensor]) -> str | None:
    """The family a LoRA file was trained for: from kohya's metadata, else from its cross-attention width."""
    version = read_metadata(path).get("ss_base_model_version", "")
    for family in FAMILIES.values():  # most specific first: "sdxl" before "v1"
        if any(marker in version for marker in family.kohya_versions):
            return family.name
    for key, tensor in state.items():
        if _CROSS_ATTENTION_KEY.search(key) and key.endswith(("lora_down.weight", "lora_A.weight", "lora.down.weight")):
            width = tensor.shape[1]
            names = [family.name for family in FAMILIES.values() if family.cross_attention_width == width]
            return names[0] if names else f"a model with cross-attention width {width}"
    return None


def _check_shapes(path: Path, layers: list[LoraLayer], components: Components) -> None:
    for layer in layers:
        module, layer_path = layer.target
        if "diff" not in layer.parts and "diff_b" in layer.parts:
            continue
        weight = components.patcher.parameter(module, layer_path + ".weight")
        try:
            layer.delta(weight.shape)
            for part in ("magnitude", "dora_scale"):
                if part in layer.parts:
                    layer._magnitude(weight.detach().cpu(), part)
        except RuntimeError as error:
            raise ModelLoadError(f"LoRA {path.name}: its {layer.kind} layer for {layer_path} does not fit the "
                                 f"weight {tuple(weight.shape)}: {str(error).splitlines()[0]}") from None


def _tucker(core: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """A Tucker-decomposed conv delta: up [out, r] · core [r, r, kh, kw] · down [r, in] -> [out, in, kh, kw]."""
    return torch.einsum("i j k l, j r, p i -> p r k l", core, down.flatten(1), up.flatten(1))


def _norm(weight: torch.Tensor, on_output: bool) -> torch.Tensor:
    """Each output row's (on_output) or each input column's norm, shaped to broadcast against `weight`."""
    ones = [1] * (weight.dim() - 1)
    if on_output:
        return weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(weight.shape[0], *ones)
    columns = weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
    return columns.reshape(weight.shape[1], *ones).transpose(0, 1)


class LoraCache:
    """The last `max_loaded` LoRA files read for each loaded checkpoint (LRU), so switching LoRAs between jobs
    reads no file twice. Held per checkpoint, weakly: a checkpoint the store unloads takes its LoRAs along."""

    def __init__(self, max_loaded: int = 16):
        self.max_loaded = max_loaded
        self._by_model: weakref.WeakKeyDictionary[ModelPatcher, OrderedDict] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, path: Path, components: Components, *, name: str, allow_pickle: bool) -> LoraFile:
        stat = path.stat()
        key = (path, stat.st_mtime_ns, stat.st_size, allow_pickle)  # a file changed on disk is read afresh
        with self._lock:
            files = self._by_model.setdefault(components.patcher, OrderedDict())
            if key in files:
                files.move_to_end(key)
                return files[key]
        lora = load_lora(path, components, allow_pickle=allow_pickle, name=name)
        with self._lock:
            files[key] = lora
            while len(files) > self.max_loaded:
                files.popitem(last=False)
        return lora
