"""diffusers/transformers state dicts -> the original (CompVis / Stability "ldm") single-file layout.

diffusers ships only the other direction (ldm -> diffusers, in `diffusers.loaders.single_file_utils`);
this module is its mirror image, written as tables of renames so each one can be checked by eye
against the original code. The output is what A1111, ComfyUI and `from_single_file` expect:

    model.diffusion_model.*                    U-Net (openaimodel.UNetModel)
    first_stage_model.*                        VAE (AutoencoderKL)
    cond_stage_model.transformer.text_model.*  SD 1.x text encoder (HF CLIP ViT-L)
    cond_stage_model.model.*                   SD 2.x text encoder (OpenCLIP ViT-H)
    conditioner.embedders.0.transformer.*      SDXL text encoder 1 (HF CLIP ViT-L)
    conditioner.embedders.1.model.*            SDXL text encoder 2 (OpenCLIP ViT-bigG)

Every function takes a plain `{name: tensor}` dict plus the module's config and returns a new dict
that shares the tensors where no reshaping is needed (no copies of the weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

StateDict = dict[str, torch.Tensor]

# --- U-Net ------------------------------------------------------------------------------------------

# Layers outside the down/mid/up blocks: diffusers module -> ldm module.
UNET_TOP_LEVEL: dict[str, str] = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's "adm" vector (pooled text + size/crop ids)
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

# Inside a ResBlock: diffusers ResnetBlock2D -> ldm ResBlock.
UNET_RESNET: dict[str, str] = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

# Inside a SpatialTransformer the names already match (norm, proj_in, transformer_blocks.N.attn1.to_q,
# ..., ff.net.0.proj, ff.net.2, proj_out), so attention blocks only move, they are not renamed.


def unet_block_moves(config: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """Where each diffusers U-Net block lives in the ldm layout: (diffusers, ldm, is_resnet).

    ldm numbers its blocks in one flat sequence per side: `input_blocks.N` holds one ResBlock plus
    an optional SpatialTransformer, or a lone Downsample; `output_blocks.N` holds one ResBlock, an
    optional SpatialTransformer and, on a level's last block, an Upsample after them.
    """
    levels = len(config["block_out_channels"])
    per_level = int(config["layers_per_block"])
    has_attention_down = ["CrossAttn" in t for t in config["down_block_types"]]
    has_attention_up = ["CrossAttn" in t for t in config["up_block_types"]]
    moves: list[tuple[str, str, bool]] = []

    n = 1  # input_blocks.0 is conv_in
    for level in range(levels):
        for j in range(per_level):
            moves.append((f"down_blocks.{level}.resnets.{j}", f"input_blocks.{n}.0", True))
            if has_attention_down[level]:
                moves.append((f"down_blocks.{level}.attentions.{j}", f"input_blocks.{n}.1", False))
            n += 1
        if level != levels - 1:
            moves.append((f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{n}.0.op", False))
            n += 1

    moves.append(("mid_block.resnets.0", "middle_block.0", True))
    moves.append(("mid_block.attentions.0", "middle_block.1", False))
    moves.append(("mid_block.resnets.1", "middle_block.2", True))

    m = 0
    for level in range(levels):
        for j in range(per_level + 1):
            moves.append((f"up_blocks.{level}.resnets.{j}", f"output_blocks.{m}.0", True))
            slot = 1
            if has_attention_up[level]:
                moves.append((f"up_blocks.{level}.attentions.{j}", f"output_blocks.{m}.1", False))
                slot = 2
            if j == per_level and level != levels - 1:
                moves.append((f"up_blocks.{level}.upsamplers.0.conv", f"output_blocks.{m}.{slot}.conv", False))
            m += 1
    return moves


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """A `UNet2DConditionModel` state dict in the ldm layout, prefixed `model.diffusion_model.`."""
    moves = [(src, dst, False) for src, dst in UNET_TOP_LEVEL.items()] + unet_block_moves(config)
    # Longest prefix first, so "up_blocks.0.resnets.1" never matches "up_blocks.0.resnets.10".
    moves.sort(key=lambda move: len(move[0]), reverse=True)
    out: StateDict = {}
    for key, tensor in state_dict.items():
        for src, dst, is_resnet in moves:
            if not key.startswith(src + "."):
                continue
            rest = key[len(src) + 1 :]
            if is_resnet:
                layer, _, param = rest.partition(".")
                rest = f"{UNET_RESNET.get(layer, layer)}.{param}"
            out[UNET_PREFIX + dst + "." + rest] = tensor
            break
        else:
            raise KeyError(f"U-Net parameter {key!r} has no place in the ldm layout")
    return out


# --- VAE --------------------------------------------------------------------------------------------

VAE_TOP_LEVEL: dict[str, str] = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_norm_out": "encoder.norm_out",
    "encoder.conv_out": "encoder.conv_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_norm_out": "decoder.norm_out",
    "decoder.conv_out": "decoder.conv_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
    "encoder.mid_block.resnets.0": "encoder.mid.block_1",
    "encoder.mid_block.resnets.1": "encoder.mid.block_2",
    "encoder.mid_block.attentions.0": "encoder.mid.attn_1",
    "decoder.mid_block.resnets.0": "decoder.mid.block_1",
    "decoder.mid_block.resnets.1": "decoder.mid.block_2",
    "decoder.mid_block.attentions.0": "decoder.mid.attn_1",
}

VAE_RESNET: dict[str, str] = {"conv_shortcut": "nin_shortcut"}  # norm1/conv1/norm2/conv2 keep their names

# ldm's VAE attention is made of 1x1 convolutions; diffusers' of linear layers.
VAE_ATTENTION: dict[str, str] = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def vae_block_moves(config: Mapping[str, Any]) -> dict[str, str]:
    """diffusers VAE block -> ldm block. The decoder's levels are numbered backwards in ldm."""
    levels = len(config["block_out_channels"])
    per_level = int(config["layers_per_block"])
    moves = dict(VAE_TOP_LEVEL)
    for level in range(levels):
        for j in range(per_level):
            moves[f"encoder.down_blocks.{level}.resnets.{j}"] = f"encoder.down.{level}.block.{j}"
        moves[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = f"encoder.down.{level}.downsample.conv"
        ldm_level = levels - 1 - level
        for j in range(per_level + 1):
            moves[f"decoder.up_blocks.{level}.resnets.{j}"] = f"decoder.up.{ldm_level}.block.{j}"
        moves[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = f"decoder.up.{ldm_level}.upsample.conv"
    return moves


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """An `AutoencoderKL` state dict in the ldm layout, prefixed `first_stage_model.`."""
    moves = sorted(vae_block_moves(config).items(), key=lambda move: len(move[0]), reverse=True)
    out: StateDict = {}
    for key, tensor in state_dict.items():
        for src, dst in moves:
            if not key.startswith(src + "."):
                continue
            rest = key[len(src) + 1 :]
            layer, _, param = rest.rpartition(".")
            if ".attentions." in src:
                layer = VAE_ATTENTION[layer]
                if tensor.ndim == 2:  # linear -> 1x1 conv weight
                    tensor = tensor[:, :, None, None]
            else:
                layer = VAE_RESNET.get(layer, layer)
            out[VAE_PREFIX + dst + "." + (f"{layer}.{param}" if layer else param)] = tensor
            break
        else:
            raise KeyError(f"VAE parameter {key!r} has no place in the ldm layout")
    return out


# --- Text encoders ------------------------------------------------------------------------------------


def clip_to_ldm(state_dict: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """A HF CLIP text model (SD 1.x, SDXL encoder 1): the HF names kept, under `prefix + "text_model."`.

    transformers >= 5.6 dropped the `text_model.` level from `CLIPTextModel`'s own keys; the
    checkpoint layout still has it.
    """
    out: StateDict = {}
    for key, tensor in state_dict.items():
        if key == "text_projection.weight":
            continue  # ViT-L's projection is not part of the SD checkpoint layout
        out[prefix + "text_model." + key.removeprefix("text_model.")] = tensor
    return out


# HF CLIP name -> OpenCLIP name, outside the transformer layers.
OPEN_CLIP_TOP_LEVEL: dict[str, str] = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}

# HF CLIP layer -> OpenCLIP residual block; q/k/v are fused into in_proj separately.
OPEN_CLIP_LAYER: dict[str, str] = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def open_clip_to_ldm(
    state_dict: Mapping[str, torch.Tensor],
    prefix: str,
    *,
    num_layers: int,
    unused_last_block: bool = False,
) -> StateDict:
    """A HF CLIP text model holding OpenCLIP weights (SD 2.x, SDXL encoder 2), in OpenCLIP's layout.

    `text_projection.weight` (a Linear, out x in) becomes OpenCLIP's `text_projection` matrix
    (in x out, applied as `x @ P`). With `unused_last_block` (SD 2.x), the file gets what the real
    SD 2 files have but the model never runs: a final residual block after the one whose output SD 2
    reads (its "penultimate" layer) and a text projection. Both are written as identities - a block
    whose output projections are zero adds nothing to the residual stream - so any reader gets the
    same hidden states, whichever layer it takes.
    """
    sd = {key.removeprefix("text_model."): tensor for key, tensor in state_dict.items()}
    out: StateDict = {}
    for src, dst in OPEN_CLIP_TOP_LEVEL.items():
        out[prefix + dst] = sd[src]
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd["text_projection.weight"].T.contiguous()

    for i in range(num_layers):
        hf, oc = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for src, dst in OPEN_CLIP_LAYER.items():
            out[oc + dst + ".weight"] = sd[hf + src + ".weight"]
            out[oc + dst + ".bias"] = sd[hf + src + ".bias"]
        for param in ("weight", "bias"):
            qkv = [sd[f"{hf}self_attn.{p}_proj.{param}"] for p in ("q", "k", "v")]
            out[f"{oc}attn.in_proj_{param}"] = torch.cat(qkv, dim=0)

    if unused_last_block:
        template = {k.removeprefix(f"{prefix}transformer.resblocks.0."): v for k, v in out.items()
                    if k.startswith(f"{prefix}transformer.resblocks.0.")}
        last = f"{prefix}transformer.resblocks.{num_layers}."
        for name, tensor in template.items():
            is_norm_weight = name in ("ln_1.weight", "ln_2.weight")
            out[last + name] = torch.ones_like(tensor) if is_norm_weight else torch.zeros_like(tensor)
        hidden = sd["embeddings.token_embedding.weight"].shape[1]
        reference = sd["embeddings.token_embedding.weight"]
        out.setdefault(prefix + "text_projection", torch.eye(hidden, dtype=reference.dtype, device=reference.device))
    return out
