"""Tiny random ControlNets and T2I-Adapters that fit the tiny U-Nets of `tiny_models`, written as users have them.

A tiny ControlNet is `ControlNetModel.from_unet` of the family's tiny U-Net (same widths, levels, context
width, heads, transformer depths, SDXL's addition embedding), with a hint encoder of two widths, so one
strided convolution brings the picture to the tiny VAE's latent size (1/2, not the real models' 1/8).
Its SDXL size ids take 256 channels each, as the real SDXL ControlNets' do (what the loader assumes).
The tiny T2I-Adapter is a full adapter with the U-Net's widths, unshuffling by the same 2.

Layouts: "original" (lllyasviel's cldm names under `control_model.`; TencentARC's names for adapters),
"diffusers" (one .safetensors file with diffusers' names) and "folder" (`save_pretrained`). The
original names come from the inverse tables below, written against ControlNet's `cldm/cldm.py` and
T2I-Adapter's `ldm/modules/encoders/adapter.py`, independently of the loader's conversion.

Every parameter is nudged by seeded noise, so the zero-initialised convolutions are not zero and no two
tensors are alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, T2IAdapter
from safetensors.torch import save_file

from brushwork.models.ldm_layout import UNET_RESNET
from tiny_models import BIG_G_PROJECTION, UNET_CHANNELS, tiny_components

HINT_CHANNELS = (16, 32)  # two widths: one stride-2 convolution, 1/2 of the picture like the tiny VAE
SDXL_TIME_ID_CHANNELS = 256
ADAPTER_RES_BLOCKS = 2  # as the published adapters; level 1's first block is then body.2 in the original
LAYOUTS = ("original", "diffusers", "folder")


def tiny_controlnet(family: str = "sd1", seed: int = 0) -> ControlNetModel:
    """A seeded tiny ControlNet for the tiny `family` ("sd1", "sd2", "sdxl") U-Net."""
    unet = tiny_components(family, seed).unet
    shaped = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS,
                                       load_weights_from_unet=False)
    config = dict(shaped.config)
    if family == "sdxl":
        config.update(addition_time_embed_dim=SDXL_TIME_ID_CHANNELS,
                      projection_class_embeddings_input_dim=BIG_G_PROJECTION + 6 * SDXL_TIME_ID_CHANNELS)
    torch.manual_seed(seed)
    return _nudged(ControlNetModel.from_config(config), seed)


def tiny_adapter(adapter_type: str = "full_adapter", seed: int = 0) -> T2IAdapter:
    """A seeded tiny T2I-Adapter. "full_adapter" fits the tiny SD 1.x U-Net; "light_adapter" and
    "full_adapter_xl" (grey pictures, unshuffled by SDXL's 16) are there to test their layouts."""
    torch.manual_seed(seed)
    if adapter_type == "full_adapter_xl":
        adapter = T2IAdapter(in_channels=1, channels=(32, 64, 64, 64), num_res_blocks=ADAPTER_RES_BLOCKS,
                             downscale_factor=16, adapter_type=adapter_type)
    else:
        adapter = T2IAdapter(in_channels=3, channels=UNET_CHANNELS, num_res_blocks=ADAPTER_RES_BLOCKS,
                             downscale_factor=2, adapter_type=adapter_type)
    return _nudged(adapter, seed)


def _nudged(module: Any, seed: int) -> Any:
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return module.eval()


def write_tiny_controlnet(
    path: str | Path, family: str = "sd1", layout: str = "original", seed: int = 0
) -> ControlNetModel:
    """Save a tiny ControlNet at `path` in `layout`; returns the network written, to compare against."""
    controlnet = tiny_controlnet(family, seed)
    path = Path(path)
    if layout == "folder":
        controlnet.save_pretrained(str(path))
    elif layout == "diffusers":
        save_file(_contiguous(controlnet.state_dict()), str(path))
    elif layout == "original":
        original = controlnet_to_cldm(controlnet.state_dict(), controlnet.config)
        save_file(_contiguous({"control_model." + k: v for k, v in original.items()}), str(path))
    else:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    return controlnet


def write_tiny_adapter(
    path: str | Path, layout: str = "original", seed: int = 0, adapter_type: str = "full_adapter"
) -> T2IAdapter:
    """Save a tiny T2I-Adapter at `path` in `layout` (.pth paths are pickled with torch.save, like
    TencentARC's releases); returns the network written."""
    adapter = tiny_adapter(adapter_type, seed)
    path = Path(path)
    if layout == "folder":
        adapter.save_pretrained(str(path))
        return adapter
    if layout == "diffusers":
        state = adapter.state_dict()
    elif layout == "original":
        state = adapter_to_tencentarc(adapter.state_dict(), adapter.config)
    else:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    state = _contiguous(state)
    if path.suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    return adapter


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


# --- diffusers -> lllyasviel's cldm ControlNet --------------------------------------------------------------

# diffusers module -> cldm module, outside the encoder blocks (cldm.py `ControlNet.__init__`).
CONTROLNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL ControlNets (sgm's U-Net copy)
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "controlnet_cond_embedding.conv_in": "input_hint_block.0",
    "controlnet_mid_block": "middle_block_out.0",
}


def controlnet_moves(config: Any) -> list[tuple[str, str, bool]]:
    """(diffusers module, cldm module, is a ResBlock) for every module of a ControlNet.

    cldm numbers `input_blocks` and `zero_convs` in one sequence: conv_in, then per level one block per
    ResBlock (+ SpatialTransformer) and a Downsample on all levels but the last, each with its zero conv.
    `input_hint_block` is a Sequential of convolutions with a SiLU after each but the last.
    """
    moves = [(ours, theirs, False) for ours, theirs in CONTROLNET_TOP_LEVEL.items()]
    steps = len(config["conditioning_embedding_out_channels"]) - 1
    for m in range(2 * steps):
        moves.append((f"controlnet_cond_embedding.blocks.{m}", f"input_hint_block.{2 * m + 2}", False))
    moves.append(("controlnet_cond_embedding.conv_out", f"input_hint_block.{4 * steps + 2}", False))

    levels = len(config["block_out_channels"])
    n = 1
    for level in range(levels):
        for j in range(config["layers_per_block"]):
            moves.append((f"down_blocks.{level}.resnets.{j}", f"input_blocks.{n}.0", True))
            moves.append((f"down_blocks.{level}.attentions.{j}", f"input_blocks.{n}.1", False))
            n += 1
        if level != levels - 1:
            moves.append((f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{n}.0.op", False))
            n += 1
    moves += [(f"controlnet_down_blocks.{i}", f"zero_convs.{i}.0", False) for i in range(n)]
    moves.append(("mid_block.resnets.0", "middle_block.0", True))
    moves.append(("mid_block.attentions.0", "middle_block.1", False))
    moves.append(("mid_block.resnets.1", "middle_block.2", True))
    return moves


def controlnet_to_cldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """A ControlNetModel state dict under cldm's names (without the `control_model.` prefix)."""
    # Longest first, so "controlnet_down_blocks.1" never takes "controlnet_down_blocks.10.weight".
    moves = sorted(controlnet_moves(config), key=lambda move: len(move[0]), reverse=True)
    out = {}
    for key, tensor in state.items():
        for ours, theirs, is_resnet in moves:
            if key.startswith(ours + "."):
                rest = key[len(ours) + 1 :]
                if is_resnet:
                    layer, _, param = rest.partition(".")
                    rest = f"{UNET_RESNET.get(layer, layer)}.{param}"
                out[f"{theirs}.{rest}"] = tensor
                break
        else:
            raise KeyError(f"ControlNet parameter {key!r} has no place in cldm's layout")
    return out


# --- diffusers -> TencentARC's T2I-Adapter ----------------------------------------------------------------


def adapter_to_tencentarc(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """A T2IAdapter state dict under TencentARC's names: `Adapter` numbers its ResnetBlocks in one flat
    `body` list (level * nums_rb + j); `Adapter_light` keeps one `extractor` per level with a nested `body`."""
    light = config["adapter_type"] == "light_adapter"
    out = {}
    for key, tensor in state.items():
        parts = key.removeprefix("adapter.").split(".")
        if parts[0] == "conv_in":
            name = key.removeprefix("adapter.")
        elif parts[2] in ("in_conv", "out_conv"):  # body.<level>.in_conv.<param>
            level = int(parts[1])
            block = level if light else level * config["num_res_blocks"]
            name = f"body.{block}.{parts[2]}.{parts[3]}"
        else:  # body.<level>.resnets.<j>.<block1|block2>.<param>
            level, j = int(parts[1]), int(parts[3])
            if light:
                name = f"body.{level}.body.{j}.{parts[4]}.{parts[5]}"
            else:
                name = f"body.{level * config['num_res_blocks'] + j}.{parts[4]}.{parts[5]}"
        out[name] = tensor
    return out
