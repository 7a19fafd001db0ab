"""LoRA and LyCORIS files for the tiny models, written in the key layouts people share.

The names follow each trainer's own rule, written here independently of brushwork's key map: kohya's SD 1.x
files use diffusers module names with `_` for `.` (`lora_unet_down_blocks_0_…`, `lora_te_text_model_…`);
peft/diffusers files keep the dots (`unet.down_blocks.0.….lora_A.weight`)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from brushwork.models.components import Components

Factors = Callable[[torch.Size, torch.Generator], dict[str, torch.Tensor]]


def layers(module: nn.Module, *, convs: bool = True) -> list[str]:
    """The module's Linear layers, and (with `convs`) its ResNet 3x3 convolutions (LoCon's extra layers)."""
    return [name for name, layer in module.named_modules()
            if isinstance(layer, nn.Linear) or (convs and isinstance(layer, nn.Conv2d) and name.endswith("conv1"))]


def file_name(prefix: str, path: str) -> str:
    """kohya's name of a layer. CLIP's layers are `text_model.encoder...` in files, whether or not the installed
    transformers (5 dropped that level) has it."""
    if prefix.startswith("lora_te") and not path.startswith("text_model."):
        path = "text_model." + path
    return prefix + path.replace(".", "_")


def lora_factors(rank: int = 4, alpha: float | None = 2.0, scale: float = 0.1) -> Factors:
    """kohya LoRA/LoCon: down [r, in(, kh, kw)], up [out, r(, 1, 1)], alpha."""

    def make(shape: torch.Size, generator: torch.Generator) -> dict[str, torch.Tensor]:
        kernel = tuple(shape[2:])
        parts = {
            "lora_down.weight": torch.randn(rank, shape[1], *kernel, generator=generator) * scale,
            "lora_up.weight": torch.randn(shape[0], rank, *([1] * len(kernel)), generator=generator) * scale,
        }
        if alpha is not None:
            parts["alpha"] = torch.tensor(alpha)
        return parts

    return make


def kohya_file(components: Components, factors: Factors, *, seed: int = 0, convs: bool = True,
               text_encoder: bool = True) -> dict[str, torch.Tensor]:
    """A kohya-layout SD 1.x/2.x file: `factors` for every layer of the U-Net (and the text encoder)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    modules = [("lora_unet_", components.unet, convs)]
    if text_encoder:
        modules.append(("lora_te_", components.text_encoders[0], False))
    for prefix, module, with_convs in modules:
        for path in layers(module, convs=with_convs):
            shape = module.get_parameter(path + ".weight").shape
            for part, tensor in factors(shape, generator).items():
                state[f"{file_name(prefix, path)}.{part}"] = tensor
    return state


def manual_merge(components: Components, state: dict[str, torch.Tensor], multiplier: float) -> dict[str, torch.Tensor]:
    """The U-Net and text encoder weights with a kohya LoRA merged by the textbook formula
    W + m · (up · down) · alpha / rank, computed here without brushwork: {"unet.<path>": W', "te.<path>": W'}."""
    merged = {}
    for prefix, name, module in (("lora_unet_", "unet", components.unet), ("lora_te_", "te", components.text_encoders[0])):
        for path in layers(module):
            key = file_name(prefix, path)
            if key + ".lora_down.weight" not in state:
                continue
            weight = module.get_parameter(path + ".weight").detach().float()
            down, up = state[key + ".lora_down.weight"], state[key + ".lora_up.weight"]
            rank = down.shape[0]
            alpha = float(state[key + ".alpha"]) if key + ".alpha" in state else rank
            delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
            merged[f"{name}.{path}"] = weight + multiplier * delta * (alpha / rank)
    return merged


def weights(components: Components) -> dict[str, torch.Tensor]:
    """Every weight of the U-Net and text encoders, copied (to compare before and after)."""
    out = {}
    for name, module in components.patcher.modules.items():
        out |= {f"{name}.{key}": value.detach().clone() for key, value in module.state_dict().items()}
    return out
