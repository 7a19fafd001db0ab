"""ControlNet and T2I-Adapter models, as users have them -> diffusers' `ControlNetModel` / `T2IAdapter`.

The layout is read from the tensors, never the file name; the first that fits wins:

    layout                                         tells itself by
    ControlNet, lllyasviel / A1111 extension       `[control_model.]input_hint_block.0.weight`
    ControlNet, diffusers names (one file)         `controlnet_cond_embedding.conv_in.weight`
    T2I-Adapter, diffusers names (one file)        `adapter.conv_in.weight` (light: `adapter.body.0.in_conv.weight`)
    T2I-Adapter, TencentARC `Adapter`              `conv_in.weight` and `body.0.block1.weight`
    T2I-Adapter, TencentARC `Adapter_light`        `body.0.body.0.block1.weight`
    diffusers folder (config.json + weights)       config.json's `_class_name`

Original layouts are renamed to diffusers' names first (`control_layout`), so one function per kind reads
the architecture from diffusers' names. What shapes cannot say follows the real models:

* ControlNet family: addition embeddings (SDXL's size/crop ids) mean SDXL; else the family whose text
  width the cross-attention takes (768 SD 1.x, 1024 SD 2.x); else, for widths no real model has (test
  models), linear transformer projections mean SD 2.x and convolutions SD 1.x, as `detect` says.
* ControlNet attention heads: `detect`'s rule for the U-Net (SD 1.x 8 heads; SD 2.x / SDXL 64 channels
  per head, or the first level's width when narrower); SDXL's size ids take 256 channels each, as in
  SDXL (the file holds only their sum with the pooled text width); 32 norm groups.
* ControlNet global average pooling (the v1.1 shuffle model) is not in the weights: it comes from an
  A1111 sibling yaml (`control_v11e_sd15_shuffle.yaml`: `global_average_pooling: true`), as the extension reads it.
* T2I-Adapter: its first layer takes the picture pixel-unshuffled, so its width is channels x factor²;
  the picture is grey (1) or RGB (3), as in every published adapter. A factor of 16 (features at 1/16:
  SDXL's second level) is diffusers' `full_adapter_xl`, for SDXL; anything else is for SD 1.x. SD 2.x
  adapters cannot be told from SD 1.x ones by their shapes (the U-Nets have the same widths); none is
  published, so they read as SD 1.x.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import ControlNetModel, T2IAdapter
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

from brushwork.errors import ModelLoadError
from brushwork.models import control_layout
from brushwork.models.control_layout import StateDict
from brushwork.models.detect import _count, _has_prefix, _key_summary, unet_head_channels
from brushwork.models.diffusers_folder import _only_fp16_weights
from brushwork.models.families import FAMILIES, family_display_name, model_family
from brushwork.models.single_file import _materialize, read_state_dict, sibling_yaml

log = logging.getLogger(__name__)

CLDM_PREFIX = "control_model."
SDXL_TIME_ID_CHANNELS = 256  # SDXL embeds each of its 6 size/crop ids in 256 channels
XL_ADAPTER_DOWNSCALE = 16  # full_adapter_xl unshuffles by 16; SD 1.x adapters by 8 (the latent size)
PICTURE_CHANNELS = (3, 1)  # RGB or grey control pictures
KIND_NAMES = {"controlnet": "ControlNet", "t2i_adapter": "T2I-Adapter"}


@dataclass
class ControlModel:
    name: str  # the file's stem or the folder's name, as A1111 lists it
    kind: str  # "controlnet" | "t2i_adapter"
    family: str  # "sd1" | "sd2" | "sdxl": the base models it was trained for
    network: torch.nn.Module  # ControlNetModel | T2IAdapter, eval(), frozen, on the device and dtype asked


@dataclass(frozen=True)
class Layout:
    """One way a control model's tensors are named in a single file."""

    description: str
    kind: str
    markers: tuple[str, ...]  # keys that all appear in such a file


LAYOUTS = (
    Layout("lllyasviel ControlNet", "controlnet", (CLDM_PREFIX + "input_hint_block.0.weight",)),
    Layout("lllyasviel ControlNet, extracted", "controlnet", ("input_hint_block.0.weight",)),
    Layout("diffusers ControlNet", "controlnet", ("controlnet_cond_embedding.conv_in.weight",)),
    Layout("diffusers T2I-Adapter", "t2i_adapter", ("adapter.conv_in.weight",)),
    Layout("diffusers T2I-Adapter", "t2i_adapter", ("adapter.body.0.in_conv.weight",)),
    Layout("TencentARC T2I-Adapter", "t2i_adapter", ("conv_in.weight", "body.0.block1.weight")),
    Layout("TencentARC light T2I-Adapter", "t2i_adapter", ("body.0.body.0.block1.weight",)),
)


# --- loading ----------------------------------------------------------------------------------------------


def load_control_model(
    path: Path, *, device: str | torch.device, dtype: torch.dtype, allow_pickle: bool = False
) -> ControlModel:
    """A ControlNet or T2I-Adapter file (.safetensors; .pth/.ckpt with `allow_pickle`) or diffusers folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        kind, network = _load_folder(path, dtype, allow_pickle)
        name = path.name
    else:
        kind, network = _load_file(path, dtype, device, allow_pickle)
        name = path.stem
    network = network.to(device).eval().requires_grad_(False)
    family = controlnet_family(network.config) if kind == "controlnet" else adapter_family(network.config)
    log.info("%s %s: %s for %s", KIND_NAMES[kind], name, type(network).__name__, family_display_name(family))
    return ControlModel(name=name, kind=kind, family=family, network=network)


def check_family(model: ControlModel, base_family: str, base_name: str) -> None:
    """ModelLoadError unless `model` was made for the family of the base model `base_name`."""
    if model.family != base_family:
        raise ModelLoadError(
            f"{KIND_NAMES[model.kind]} {model.name!r} is for {family_display_name(model.family)} models, but "
            f"the model {base_name!r} is {family_display_name(base_family)}; choose a "
            f"{KIND_NAMES[model.kind]} made for {family_display_name(base_family)}"
        )


def _load_file(
    path: Path, dtype: torch.dtype, device: str | torch.device, allow_pickle: bool
) -> tuple[str, torch.nn.Module]:
    state = read_state_dict(path, allow_pickle=allow_pickle)
    layout = next((lay for lay in LAYOUTS if all(marker in state for marker in lay.markers)), None)
    if layout is None:
        raise _unknown_tensors(path, sorted(state))
    log.debug("%s: %s layout", path.name, layout.description)
    try:
        if layout.kind == "controlnet":
            weights = _controlnet_weights(state, path)
            config = controlnet_config(weights, path)
            config["global_pool_conditions"] = _global_pooling(path)
            factory = partial(ControlNetModel.from_config, config)
        else:
            weights = _adapter_weights(state, path)
            factory = partial(T2IAdapter.from_config, adapter_config(weights, path))
    except KeyError as err:  # a tensor every such model has
        raise ModelLoadError(f"{path.name} is an incomplete {KIND_NAMES[layout.kind]}: it has no {err}") from None
    del state  # tensors left untaken (a v1.0 file's whole SD model) are freed before the network is built
    try:
        return layout.kind, _materialize(KIND_NAMES[layout.kind], factory, weights, dtype, device)
    except ModelLoadError as err:  # stray or missing tensors: say which file
        raise ModelLoadError(f"{path.name}: {err}") from err


def _load_folder(path: Path, dtype: torch.dtype, allow_pickle: bool) -> tuple[str, torch.nn.Module]:
    """A diffusers model folder, local files only; fp16-only folders too."""
    if (path / "model_index.json").is_file():
        raise ModelLoadError(f"{path} is a whole diffusers pipeline, not a ControlNet or T2I-Adapter folder")
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path} is not a diffusers model folder: cannot read its config.json ({err})") from err
    classes: dict[str, tuple[str, Any]] = {
        "ControlNetModel": ("controlnet", ControlNetModel),
        "T2IAdapter": ("t2i_adapter", T2IAdapter),
    }
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    if class_name not in classes:
        raise ModelLoadError(f"{path} holds a {class_name or 'model of no known class'}, not a ControlNet "
                             "(ControlNetModel) or T2I-Adapter (T2IAdapter)")
    kind, cls = classes[class_name]
    weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin")]
    safe = any(p.suffix == ".safetensors" for p in weights)
    if weights and not safe and not allow_pickle:
        raise ModelLoadError(
            f"{path.name} holds its weights as a pickle file (.bin), which can run code when opened; pass "
            "--allow-pickle to open it anyway (tensors only, weights_only=True), or convert it to .safetensors"
        )
    variant = "fp16" if _only_fp16_weights(path) else None
    try:
        network = cls.from_pretrained(str(path), local_files_only=True, use_safetensors=safe, variant=variant,
                                      torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"cannot load the {KIND_NAMES[kind]} folder {path}: {err}") from err
    return kind, network


def _unknown_tensors(path: Path, keys: list[str]) -> ModelLoadError:
    return ModelLoadError(
        f"{path.name} is no ControlNet or T2I-Adapter brushwork can read: {len(keys)} tensors such as "
        f"{', '.join(keys[:4]) or 'none'} ({_key_summary(keys)}); brushwork reads ControlNets in the lllyasviel "
        "(A1111 extension) or diffusers layout and T2I-Adapters in the TencentARC or diffusers layout"
    )


# --- ControlNet -------------------------------------------------------------------------------------------


def _controlnet_weights(state: StateDict, path: Path) -> StateDict:
    """The ControlNet's tensors under diffusers' names (diffusers-named files pass through)."""
    if "controlnet_cond_embedding.conv_in.weight" in state:
        return state
    if "difference" in state:
        raise ModelLoadError(
            f"{path.name} is a 'difference' ControlNet: its weights are offsets from the SD 1.5 U-Net it was made "
            "from, which brushwork does not add back; use the ControlNet's ordinary (non-difference) release"
        )
    if _has_prefix(state, CLDM_PREFIX):
        cldm = {k.removeprefix(CLDM_PREFIX): v for k, v in state.items() if k.startswith(CLDM_PREFIX)}
        ignored = [k for k in state if not k.startswith(CLDM_PREFIX)]
        if ignored:  # the v1.0 releases carry the whole SD model the ControlNet was trained with
            log.info("%s: ignoring %d tensors beside the ControlNet: %s",
                     path.name, len(ignored), _key_summary(ignored))
    else:
        cldm = dict(state)
    unknown = sorted(k for k in cldm if not k.startswith(control_layout.CLDM_PARTS))
    if unknown:
        raise _unknown_tensors(path, unknown)

    hint = {k: cldm.pop(k) for k in [k for k in cldm if k.startswith("input_hint_block.")]}
    label = {k: cldm.pop(k) for k in [k for k in cldm if k.startswith("label_emb.")]}
    converted = convert_controlnet_checkpoint(cldm, {"layers_per_block": control_layout.cldm_layers_per_block(cldm)})
    converted.update(control_layout.hint_block_to_diffusers(hint))
    unplaced = sorted(k for k in label if k not in control_layout.LABEL_EMB)
    if unplaced:
        raise _unknown_tensors(path, unplaced)
    converted.update({control_layout.LABEL_EMB[k]: v for k, v in label.items()})
    missing = sorted(k for k, v in converted.items() if v is None)  # the converter's `.get` of absent tensors
    if missing:
        raise ModelLoadError(f"{path.name} is an incomplete ControlNet: no tensors for {', '.join(missing[:4])}")
    return converted


def controlnet_config(weights: StateDict, path: Path) -> dict[str, Any]:
    """`ControlNetModel` config from diffusers-named tensors."""
    levels = _count(weights, "down_blocks.")
    if levels == 0 or "conv_in.weight" not in weights:
        raise _unknown_tensors(path, sorted(weights))
    channels = [int(weights[f"down_blocks.{i}.resnets.0.conv2.weight"].shape[0]) for i in range(levels)]
    attention = [_has_prefix(weights, f"down_blocks.{i}.attentions.") for i in range(levels)]
    if not any(attention):
        raise ModelLoadError(f"{path.name}: a ControlNet without cross-attention layers is not supported")
    depths = [_count(weights, f"down_blocks.{i}.attentions.0.transformer_blocks.") or 1 for i in range(levels)]
    mid_depth = _count(weights, "mid_block.attentions.0.transformer_blocks.")
    if mid_depth and mid_depth != depths[-1]:  # diffusers gives the middle block the last level's depth
        raise ModelLoadError(f"{path.name}: unsupported ControlNet: its middle block's transformer depth "
                             f"({mid_depth}) differs from its last level's ({depths[-1]})")
    attn = f"down_blocks.{attention.index(True)}.attentions.0."
    context = int(weights[attn + "transformer_blocks.0.attn2.to_k.weight"].shape[1])
    linear = weights[attn + "proj_in.weight"].ndim == 2
    size_ids = weights.get("add_embedding.linear_1.weight")
    family = _family(size_conditioning=size_ids is not None, context=context, linear=linear)
    head_rule = model_family(family).unet_heads
    heads = head_rule or [c // unet_head_channels(channels[0]) for c in channels]

    hint_in = weights["controlnet_cond_embedding.conv_in.weight"]
    steps = _count(weights, "controlnet_cond_embedding.blocks.") // 2  # each step: a conv, then a strided one
    hint = [int(hint_in.shape[0])] + [
        int(weights[f"controlnet_cond_embedding.blocks.{2 * i + 1}.weight"].shape[0]) for i in range(steps)
    ]
    config: dict[str, Any] = {
        "in_channels": int(weights["conv_in.weight"].shape[1]),
        "conditioning_channels": int(hint_in.shape[1]),
        "conditioning_embedding_out_channels": hint,
        "block_out_channels": channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_depth else "UNetMidBlock2D",
        "layers_per_block": _count(weights, "down_blocks.0.resnets."),
        "transformer_layers_per_block": depths,
        "cross_attention_dim": context,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "norm_num_groups": 32,
    }
    if size_ids is not None:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_ID_CHANNELS,
            projection_class_embeddings_input_dim=int(size_ids.shape[1]),
        )
    return config


def controlnet_family(config: Any) -> str:
    """The family a ControlNet (its diffusers config) was made for; see the module's notes."""
    return _family(
        size_conditioning=config.get("addition_embed_type") == "text_time",
        context=int(config["cross_attention_dim"]),
        linear=bool(config.get("use_linear_projection")),
    )


def _family(*, size_conditioning: bool, context: int, linear: bool) -> str:
    if size_conditioning:
        return "sdxl"
    for family in FAMILIES.values():
        if family.cross_attention_width == context:
            return family.key
    return "sd2" if linear else "sd1"


def _global_pooling(path: Path) -> bool:
    """The A1111 sibling yaml's `global_average_pooling` (ControlNet v1.1 shuffle); False without one."""
    yaml_path = sibling_yaml(path)
    if yaml_path is None:
        return False
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ModelLoadError(f"cannot read the ControlNet config {yaml_path}: {err}") from err
    try:
        params = data["model"]["params"]["control_stage_config"]["params"]
    except (KeyError, TypeError):
        log.info("%s has no model.params.control_stage_config.params; not used", yaml_path)
        return False
    return bool(params.get("global_average_pooling", False))


# --- T2I-Adapter ------------------------------------------------------------------------------------------


def _adapter_weights(state: StateDict, path: Path) -> StateDict:
    """The adapter's tensors under diffusers' names (diffusers-named files pass through)."""
    if _has_prefix(state, "adapter."):
        return state
    light = "body.0.body.0.block1.weight" in state
    table = control_layout.LIGHT_ADAPTER if light else control_layout.FULL_ADAPTER
    unknown = control_layout.unmatched_keys(state, table)
    if unknown:
        raise _unknown_tensors(path, unknown)
    if light:
        return control_layout.adapter_to_diffusers(state, table)
    res_blocks = control_layout.adapter_res_blocks(state)
    if res_blocks is None:
        raise ModelLoadError(f"{path.name}: no block of this T2I-Adapter changes width, so its levels cannot be told")
    return control_layout.adapter_to_diffusers(state, table, num_res_blocks=res_blocks)


def adapter_config(weights: StateDict, path: Path) -> dict[str, Any]:
    """`T2IAdapter` config from diffusers-named tensors."""
    levels = _count(weights, "adapter.body.")
    light = "adapter.conv_in.weight" not in weights
    if light:  # diffusers' LightAdapter ends with one more block at the last width
        first = weights["adapter.body.0.in_conv.weight"]
        channels = [int(weights[f"adapter.body.{i}.out_conv.weight"].shape[0]) for i in range(levels - 1)]
    else:
        first = weights["adapter.conv_in.weight"]
        channels = [int(weights[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0]) for i in range(levels)]
    picture_channels, factor = _unshuffled_input(int(first.shape[1]), path)
    if light:
        adapter_type = "light_adapter"
    else:
        adapter_type = "full_adapter_xl" if factor == XL_ADAPTER_DOWNSCALE else "full_adapter"
    return {
        "in_channels": picture_channels,
        "channels": channels,
        "num_res_blocks": _count(weights, "adapter.body.0.resnets."),
        "downscale_factor": factor,
        "adapter_type": adapter_type,
    }


def adapter_family(config: Any) -> str:
    """The family a T2I-Adapter (its diffusers config) was made for; see the module's notes."""
    return "sdxl" if config["adapter_type"] == "full_adapter_xl" else "sd1"


def _unshuffled_input(width: int, path: Path) -> tuple[int, int]:
    """(picture channels, unshuffle factor) of an adapter whose first layer takes `width` = channels x factor²."""
    for channels in PICTURE_CHANNELS:
        factor = math.isqrt(width // channels)
        if factor > 0 and channels * factor * factor == width:
            return channels, factor
    raise ModelLoadError(f"{path.name}: the T2I-Adapter's first layer takes {width} channels, which is no grey or "
                         "RGB picture pixel-unshuffled by a whole factor")
