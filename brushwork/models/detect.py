"""Which Stable Diffusion a single-file checkpoint holds, read from its key names and tensor shapes.

The result is data: a family ("sd1" | "sd2" | "sdxl"), an inpainting flag, where each text encoder
lives, and the original ldm config (the dict an A1111 `model.yaml` holds) rebuilt from the shapes,
so models of any width - the real ones and our tiny test models - are described the same way.

Rules:

* family: SDXL has two embedders under `conditioner.embedders.*` (and a `label_emb` "adm" input);
  SD 2.x has an OpenCLIP text encoder at `cond_stage_model.model.*` (and linear `proj_in`s);
  SD 1.x has a HF CLIP text encoder at `cond_stage_model.transformer.*`.
* inpainting: the U-Net's first convolution takes 9 channels (latents + mask + masked image).
* attention heads cannot be read from shapes, so they follow each family's convention:
  SD 1.x uses 8 heads everywhere (`num_heads: 8`); SD 2.x and SDXL use 64 channels per head
  (`num_head_channels: 64`), or `model_channels` per head when the U-Net is narrower than 64
  (tiny models), so a level with C channels has C // head_channels heads. CLIP text encoders use
  max(1, hidden // 64) heads (768 -> 12, 1024 -> 16, 1280 -> 20, like the real ones).
* SD 2.x text encoders run up to OpenCLIP's penultimate block; the last block in the file is dropped,
  as diffusers does.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from brushwork.errors import ModelLoadError
from brushwork.models.families import FAMILIES, SDXL, model_family
from brushwork.models.ldm_layout import SD1_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

log = logging.getLogger(__name__)

HEAD_CHANNELS = 64

# The noise schedule every SD family was trained with, in diffusers' scheduler-config words.
BASE_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "prediction_type": "epsilon",
}

@dataclass
class TextEncoderLayout:
    """One text encoder inside the checkpoint."""

    prefix: str  # e.g. "cond_stage_model.model."
    kind: str  # "clip" (HF CLIP names) | "open_clip" (OpenCLIP names)
    config: dict[str, Any]  # transformers.CLIPTextConfig kwargs
    with_projection: bool = False  # build a CLIPTextModelWithProjection (SDXL's second encoder)
    drop_last_block: bool = False  # SD 2.x: the last OpenCLIP block in the file is never run


@dataclass
class Detection:
    """What `detect` found: enough to build every module and convert every weight."""

    family: str
    inpaint: bool
    original_config: dict[str, Any]  # ldm layout: {"model": {"params": {unet_config, first_stage_config, ...}}}
    text_encoders: list[TextEncoderLayout]
    prediction_type: str | None = None  # "epsilon" | "v_prediction" when the file says; None: undecided
    leftover_keys: list[str] = field(default_factory=list)

    @property
    def unet_params(self) -> dict[str, Any]:
        return self.original_config["model"]["params"]["unet_config"]["params"]

    @property
    def ddconfig(self) -> dict[str, Any]:
        return self.original_config["model"]["params"]["first_stage_config"]["params"]["ddconfig"]


def normalize_keys(state_dict: dict[str, torch.Tensor]) -> None:
    """Fix, in place, old spellings of the SD 1.x text encoder keys.

    Checkpoints saved with transformers < 4.19 lack the `text_model.` level.
    """
    old = [k for k in state_dict if k.startswith(SD1_CLIP_PREFIX) and not k.startswith(SD1_CLIP_PREFIX + "text_model.")]
    for key in old:
        state_dict[SD1_CLIP_PREFIX + "text_model." + key[len(SD1_CLIP_PREFIX) :]] = state_dict.pop(key)


def detect(state_dict: Mapping[str, torch.Tensor]) -> Detection:
    """Describe the Stable Diffusion model in an ldm-layout state dict; ModelLoadError if it is none."""
    if UNET_PREFIX + "input_blocks.0.0.weight" not in state_dict:
        raise ModelLoadError(
            "not a Stable Diffusion checkpoint: no U-Net keys 'model.diffusion_model.*' found; "
            f"is this a LoRA or VAE file? (its keys start with: {_key_summary(state_dict)})"
        )
    family = _family(state_dict)
    text_encoders = _text_encoders(state_dict, family)
    unet = _unet_params(state_dict, family, text_encoders)
    params: dict[str, Any] = {
        "linear_start": BASE_SCHEDULER_CONFIG["beta_start"],
        "linear_end": BASE_SCHEDULER_CONFIG["beta_end"],
        "timesteps": BASE_SCHEDULER_CONFIG["num_train_timesteps"],
        "scale_factor": model_family(family).vae_scale_factor,
        "unet_config": {"params": unet},
        "first_stage_config": {"params": _vae_params(state_dict)},
    }
    # ComfyUI's convention for v-prediction SDXL models (e.g. NoobAI-XL V-Pred): an empty marker tensor.
    prediction_type = "v_prediction" if "v_pred" in state_dict else None
    if prediction_type:
        params["parameterization"] = "v"

    used = [UNET_PREFIX, VAE_PREFIX, *(te.prefix for te in text_encoders)]
    leftover = sorted(k for k in state_dict if not k.startswith(tuple(used)) and k != "v_pred")
    if leftover:
        log.info("ignoring %d checkpoint keys not used for inference: %s", len(leftover), _key_summary(leftover))
        log.debug("left-over keys: %s", leftover)
    return Detection(
        family=family,
        inpaint=unet["in_channels"] == 9,
        original_config={"model": {"params": params}},
        text_encoders=text_encoders,
        prediction_type=prediction_type,
        leftover_keys=leftover,
    )


def _family(sd: Mapping[str, torch.Tensor]) -> str:
    """The first family (most specific first) whose every text encoder the file holds."""
    if _has_prefix(sd, "conditioner.embedders.0.model.") and not _has_prefix(sd, SDXL.text_encoders[0].ldm_prefix):
        raise ModelLoadError("this is an SDXL refiner checkpoint, which is not supported; use an SDXL base model")
    for family in FAMILIES.values():
        if all(_has_prefix(sd, slot.ldm_prefix) for slot in family.text_encoders):
            return family.key
    raise ModelLoadError(
        "the checkpoint has a U-Net but no text encoder ('cond_stage_model.*' or 'conditioner.embedders.*'); "
        "brushwork needs a full Stable Diffusion 1.x, 2.x or SDXL checkpoint"
    )


# --- text encoders ------------------------------------------------------------------------------------


def _text_encoders(sd: Mapping[str, torch.Tensor], family: str) -> list[TextEncoderLayout]:
    return [
        _clip_layout(sd, slot.ldm_prefix) if slot.kind == "clip"
        else _open_clip_layout(sd, slot.ldm_prefix, with_projection=slot.with_projection,
                               drop_last_block=slot.drop_last_block)
        for slot in model_family(family).text_encoders
    ]


def _clip_layout(sd: Mapping[str, torch.Tensor], prefix: str) -> TextEncoderLayout:
    p = prefix + "text_model."
    vocab, hidden = sd[p + "embeddings.token_embedding.weight"].shape
    config = _clip_config(
        vocab=vocab,
        hidden=hidden,
        layers=_count(sd, p + "encoder.layers."),
        intermediate=sd[p + "encoder.layers.0.mlp.fc1.weight"].shape[0],
        positions=sd[p + "embeddings.position_embedding.weight"].shape[0],
        act="quick_gelu",  # OpenAI CLIP ViT-L/14
    )
    return TextEncoderLayout(prefix=prefix, kind="clip", config=config)


def _open_clip_layout(
    sd: Mapping[str, torch.Tensor], prefix: str, *, with_projection: bool = False, drop_last_block: bool = False
) -> TextEncoderLayout:
    vocab, hidden = sd[prefix + "token_embedding.weight"].shape
    layers = _count(sd, prefix + "transformer.resblocks.") - (1 if drop_last_block else 0)
    if layers < 1:
        raise ModelLoadError(f"the OpenCLIP text encoder at '{prefix}*' has too few layers")
    config = _clip_config(
        vocab=vocab,
        hidden=hidden,
        layers=layers,
        intermediate=sd[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        positions=sd[prefix + "positional_embedding"].shape[0],
        act="gelu",  # OpenCLIP ViT-H/14 and ViT-bigG/14
    )
    if with_projection:
        if prefix + "text_projection" not in sd:
            raise ModelLoadError(f"the SDXL text encoder 2 has no '{prefix}text_projection'")
        config["projection_dim"] = sd[prefix + "text_projection"].shape[1]
    return TextEncoderLayout(
        prefix=prefix, kind="open_clip", config=config, with_projection=with_projection, drop_last_block=drop_last_block
    )


def _clip_config(
    *, vocab: int, hidden: int, layers: int, intermediate: int, positions: int, act: str
) -> dict[str, Any]:
    return {
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "intermediate_size": int(intermediate),
        "num_hidden_layers": int(layers),
        "num_attention_heads": clip_heads(int(hidden)),
        "max_position_embeddings": int(positions),
        "hidden_act": act,
        "projection_dim": int(hidden),
        # The CLIP BPE vocabulary's special tokens (the shipped tokenizer); pooling looks for eos.
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    }


def clip_heads(hidden: int) -> int:
    """Attention heads of a CLIP text encoder of this width: 64 channels per head, at least one."""
    return max(1, hidden // HEAD_CHANNELS)


# --- U-Net --------------------------------------------------------------------------------------------


def unet_head_channels(model_channels: int) -> int:
    """Channels per attention head for SD 2.x / SDXL: 64, or the first level's width if narrower."""
    return min(HEAD_CHANNELS, model_channels)


def _unet_params(sd: Mapping[str, torch.Tensor], family: str, text_encoders: list[TextEncoderLayout]) -> dict[str, Any]:
    """ldm `unet_config.params`, from the walk of `input_blocks` (one ResBlock per block, then a
    SpatialTransformer if the level has attention; a lone Downsample ends each level but the last)."""
    u = UNET_PREFIX
    conv_in = sd[u + "input_blocks.0.0.weight"]
    model_channels, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    if in_channels not in (4, 9):
        raise ModelLoadError(
            f"unsupported U-Net with {in_channels} input channels (only 4, or 9 for inpainting, are supported)"
        )

    levels: list[dict[str, Any]] = [{"resnets": 0, "channels": model_channels, "depth": 0}]
    for n in range(1, _count(sd, u + "input_blocks.")):
        block = f"{u}input_blocks.{n}."
        if block + "0.op.weight" in sd:
            levels.append({"resnets": 0, "channels": None, "depth": 0})
            continue
        level = levels[-1]
        level["resnets"] += 1
        level["channels"] = int(sd[block + "0.out_layers.3.weight"].shape[0])
        depth = _count(sd, block + "1.transformer_blocks.")
        if level["resnets"] > 1 and depth != level["depth"]:
            raise ModelLoadError("unsupported U-Net: transformer depth varies within a level")
        level["depth"] = depth

    num_res_blocks = levels[0]["resnets"]
    if num_res_blocks == 0 or any(level["resnets"] != num_res_blocks for level in levels):
        raise ModelLoadError("unsupported U-Net: levels have different numbers of ResBlocks")
    depths = [level["depth"] for level in levels]
    attention_levels = [i for i, d in enumerate(depths) if d]
    if not attention_levels:
        raise ModelLoadError("unsupported U-Net: no cross-attention layers found")
    first = attention_levels[0]
    attn = f"{u}input_blocks.{1 + first * (num_res_blocks + 1)}.1."  # level `first`'s first block
    uniform_depth = len({depths[i] for i in attention_levels}) == 1
    # diffusers gives the middle block the last level's depth (SD: 1, SDXL: 10); check the file agrees.
    middle_depth = _count(sd, u + "middle_block.1.transformer_blocks.")
    if middle_depth != (depths[first] if uniform_depth else depths[-1]):
        raise ModelLoadError("unsupported U-Net: the middle block's transformer depth differs from the last level's")

    params: dict[str, Any] = {
        "in_channels": in_channels,
        "out_channels": int(sd[u + "out.2.weight"].shape[0]),
        "model_channels": model_channels,
        "num_res_blocks": num_res_blocks,
        "channel_mult": [level["channels"] // model_channels for level in levels],
        "attention_resolutions": [2**i for i in attention_levels],  # as downsampling factors
        "transformer_depth": depths[first] if uniform_depth else depths,
        "context_dim": int(sd[attn + "transformer_blocks.0.attn2.to_k.weight"].shape[1]),
        "use_linear_in_transformer": sd[attn + "proj_in.weight"].ndim == 2,
        "use_spatial_transformer": True,
        "legacy": False,
    }
    if model_family(family).unet_heads:
        params["num_heads"] = model_family(family).unet_heads
    else:
        params["num_head_channels"] = unet_head_channels(model_channels)
    if u + "label_emb.0.0.weight" in sd:
        params["num_classes"] = "sequential"
        params["adm_in_channels"] = int(sd[u + "label_emb.0.0.weight"].shape[1])

    context = sum(te.config["hidden_size"] for te in text_encoders)
    if params["context_dim"] != context:
        raise ModelLoadError(
            f"the U-Net expects text features of width {params['context_dim']} but the text encoder(s) "
            f"give {context}; the checkpoint mixes parts of different models"
        )
    return params


# --- VAE ----------------------------------------------------------------------------------------------


def _vae_params(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """ldm `first_stage_config.params`: the VAE's `ddconfig` plus `embed_dim`."""
    v = VAE_PREFIX
    if v + "encoder.conv_in.weight" not in sd:
        raise ModelLoadError(
            "the checkpoint has no VAE ('first_stage_model.*'); brushwork needs a full checkpoint with its VAE"
        )
    conv_in = sd[v + "encoder.conv_in.weight"]
    ch = int(conv_in.shape[0])
    levels = _count(sd, v + "encoder.down.")
    z_channels = int(sd[v + "decoder.conv_in.weight"].shape[1])
    ddconfig = {
        "double_z": int(sd[v + "encoder.conv_out.weight"].shape[0]) == 2 * z_channels,
        "z_channels": z_channels,
        "resolution": 256,
        "in_channels": int(conv_in.shape[1]),
        "out_ch": int(sd[v + "decoder.conv_out.weight"].shape[0]),
        "ch": ch,
        "ch_mult": [int(sd[f"{v}encoder.down.{i}.block.0.conv2.weight"].shape[0]) // ch for i in range(levels)],
        "num_res_blocks": _count(sd, v + "encoder.down.0.block."),
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    return {"embed_dim": int(sd[v + "quant_conv.weight"].shape[0]) // 2, "ddconfig": ddconfig}


# --- the A1111 sibling yaml -----------------------------------------------------------------------------


def apply_original_config(detection: Detection, override: Mapping[str, Any]) -> Detection:
    """A copy of `detection` with an A1111-style `model.yaml` laid over what the shapes said.

    The yaml wins wherever it speaks (as in A1111); keys it leaves out keep their inferred values.
    SDXL yamls call the U-Net `network_config`; it is read as `unet_config`.
    """
    result = copy.deepcopy(detection)
    params = result.original_config["model"]["params"]
    given = dict(((override or {}).get("model") or {}).get("params") or {})
    if "network_config" in given:
        given["unet_config"] = given.pop("network_config")

    unet_given = ((given.pop("unet_config", None) or {}).get("params")) or {}
    if {"num_heads", "num_head_channels"} & unet_given.keys():
        # The yaml chooses its own head rule; ours must not shadow it.
        params["unet_config"]["params"].pop("num_heads", None)
        params["unet_config"]["params"].pop("num_head_channels", None)
    params["unet_config"]["params"].update(unet_given)

    first_stage = ((given.pop("first_stage_config", None) or {}).get("params")) or {}
    params["first_stage_config"]["params"]["ddconfig"].update(first_stage.get("ddconfig") or {})
    if "embed_dim" in first_stage:
        params["first_stage_config"]["params"]["embed_dim"] = first_stage["embed_dim"]

    for key in ("scale_factor", "linear_start", "linear_end", "timesteps", "parameterization"):
        if key in given:
            params[key] = given[key]
    if "parameterization" in given:
        result.prediction_type = "v_prediction" if given["parameterization"] == "v" else "epsilon"
    result.inpaint = params["unet_config"]["params"]["in_channels"] == 9
    return result


# --- v-prediction probe -------------------------------------------------------------------------------


@torch.no_grad()
def looks_like_v_prediction(unet: torch.nn.Module) -> bool:
    """A1111's test for SD 2.x checkpoints without a yaml: one U-Net call at the noisiest timestep.

    On a flat grey latent (0.5 everywhere) at t=999 an epsilon model predicts noise close to its
    input, while a v model's output lands far below it; A1111 calls it v when mean(out - x) < -1.
    """
    param = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=param.dtype, device=param.device)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=param.dtype, device=param.device)
    t = torch.tensor([999], device=param.device)
    out = unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
    # An inpainting U-Net predicts only the 4 latent channels.
    score = (out.float() - x[:, : out.shape[1]].float()).mean().item()
    log.debug("v-prediction probe: mean(out - x) = %.3f", score)
    return score < -1.0


# --- helpers ------------------------------------------------------------------------------------------


def _has_prefix(sd: Mapping[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in sd)


def _count(sd: Mapping[str, Any], prefix: str) -> int:
    """How many numbered children `prefix` has: 1 + the largest N among keys `prefix + "N."`."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for k in sd if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


def _key_summary(keys: Any, limit: int = 6) -> str:
    """'model_ema.* (1100), alphas_cumprod, ...': the top-level groups of some keys."""
    groups = Counter(k.split(".")[0] + (".*" if "." in k else "") for k in keys)
    parts = [f"{g} ({n})" if n > 1 else g for g, n in groups.most_common(limit)]
    if len(groups) > limit:
        parts.append("...")
    return ", ".join(parts) or "nothing"
