"""A1111/CompVis-style single-file checkpoints (`.safetensors`, or `.ckpt` on request) <-> Components.

Loading: read the state dict, `detect` the architecture, lay an A1111 sibling `model.yaml` over it,
build each module empty (`accelerate.init_empty_weights`), convert its weights with diffusers' own
ldm -> diffusers converters and hand them over with `load_state_dict(assign=True)`. Each component's
keys are popped from the checkpoint dict before conversion, so the weights are held once, not twice.

Decided per file, first rule that applies wins:

* prediction type: the yaml's `parameterization`; a `v_pred` marker key; safetensors metadata
  `modelspec.prediction_type`; for SD 2.x (not inpainting) A1111's test forward of the U-Net;
  else epsilon.
* native size: metadata `modelspec.resolution` (our writer stores it, so tiny models keep theirs);
  else the family's: SD 1.x 512, SD 2.x 768 for v-prediction and 512 for epsilon, SDXL 1024.
  (A yaml's `image_size` is not used: v1-inference.yaml says 32 latents, i.e. 256 px.)
* VAE scaling factor: the yaml's `scale_factor`; else 0.18215 (SD 1.x/2.x) or 0.13025 (SDXL).

Saving writes the ldm layout (`ldm_layout`), which A1111, ComfyUI and diffusers' `from_single_file`
read.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import accelerate
import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)
from diffusers.models.attention_processor import Attention
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from brushwork.errors import ModelLoadError
from brushwork.models import ldm_layout
from brushwork.models.components import Components
from brushwork.models.families import model_family
from brushwork.models.detect import (
    BASE_SCHEDULER_CONFIG,
    Detection,
    TextEncoderLayout,
    apply_original_config,
    detect,
    looks_like_v_prediction,
    normalize_keys,
)

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SHIPPED_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "clip-tokenizer"

StateDict = dict[str, torch.Tensor]


# --- reading ------------------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> StateDict:
    """Every tensor in a checkpoint file, by name. Pickle files (.ckpt) only with `allow_pickle`,
    and then with `torch.load(weights_only=True)`, which refuses anything but tensors and plain data."""
    path = _existing_file(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _read_pickle(path, allow_pickle)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError on a short read
        hint = " (is it a renamed .ckpt?)" if path.suffix.lower() not in SAFETENSORS_SUFFIXES else ""
        raise ModelLoadError(
            f"{path} is not a readable .safetensors file{hint}: {err}; the file may be incomplete or corrupt, "
            "download it again"
        ) from err


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The `__metadata__` strings of a .safetensors file; {} for other files or none."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def _existing_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        is_diffusers = (path / "model_index.json").exists()
        hint = " (it has a model_index.json: load it as a diffusers folder)" if is_diffusers else ""
        raise ModelLoadError(f"{path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    return path


def _read_pickle(path: Path, allow_pickle: bool) -> StateDict:
    data = read_pickled(path, allow_pickle=allow_pickle)
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):  # Lightning wraps the weights
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name} does not hold a state dict")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def read_pickled(path: Path, *, allow_pickle: bool) -> Any:
    """What a pickle file (.ckpt, .pt, .bin) holds, only with the opt-in and then with `weights_only=True`
    (tensors and plain data; nothing that runs code)."""
    if not allow_pickle:
        raise ModelLoadError(
            f"{path.name} is a pickle checkpoint, which can run code when opened; pass --allow-pickle to open it "
            "anyway (tensors only, weights_only=True), or convert it to .safetensors"
        )
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) torch files cannot be memory-mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelLoadError(
            f"{path.name} holds Python objects besides tensors, so it cannot be opened safely (weights_only); "
            f"convert it to .safetensors with a tool you trust ({err})"
        ) from err
    except Exception as err:
        raise ModelLoadError(
            f"{path} is not a readable checkpoint: {err}; the file may be incomplete or corrupt"
        ) from err
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ModelLoadError(f"cannot read the model config {path}: {err}") from err
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not an ldm model config (expected a mapping with model.params)")
    return data


def sibling_yaml(path: str | os.PathLike[str]) -> Path | None:
    """A1111's per-model config: `model.yaml` beside `model.safetensors`."""
    for suffix in (".yaml", ".yml"):
        candidate = Path(path).with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


# --- loading ------------------------------------------------------------------------------------------


def load_single_file(
    path: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Components:
    """Load a single-file SD 1.x / 2.x / SDXL checkpoint (and its sibling yaml, if any)."""
    path = Path(path)
    state_dict = read_state_dict(path, allow_pickle=allow_pickle)
    metadata = read_metadata(path)
    normalize_keys(state_dict)
    detection = detect(state_dict)
    yaml_path = sibling_yaml(path)
    if yaml_path is not None:
        log.info("using the model config %s", yaml_path)
        detection = apply_original_config(detection, _read_yaml(yaml_path))

    vae = _load_vae(state_dict, detection, dtype, device)
    text_encoders = [_load_text_encoder(state_dict, layout, dtype, device) for layout in detection.text_encoders]
    unet = _load_unet(state_dict, detection, dtype, device)
    state_dict.clear()

    family = model_family(detection.family)
    prediction_type = detection.prediction_type or _metadata_prediction_type(metadata)
    if prediction_type is None:
        prediction_type = "epsilon"
        if family.probe_v_prediction and not detection.inpaint:  # SD 2 inpainting is epsilon (as in A1111)
            prediction_type = "v_prediction" if _probe(unet, path) else "epsilon"
            log.info("%s: no yaml or metadata gives the prediction type; the test forward says %s",
                     path.name, prediction_type)
    if family.upcast_attention_when_v and prediction_type == "v_prediction":
        _upcast_attention(unet)  # SD 2.1-v overflows in fp16 attention otherwise (diffusers sets it too)

    native_size = _metadata_resolution(metadata) or family.native_size_for(prediction_type)
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet.register_to_config(sample_size=native_size // vae_factor)
    vae.register_to_config(sample_size=native_size)

    params = detection.original_config["model"]["params"]
    scheduler_config = dict(BASE_SCHEDULER_CONFIG)
    scheduler_config.update(
        beta_start=float(params["linear_start"]),
        beta_end=float(params["linear_end"]),
        num_train_timesteps=int(params["timesteps"]),
        prediction_type=prediction_type,
    )
    open_clip = [layout.kind == "open_clip" for layout in detection.text_encoders]
    return Components(
        family=detection.family,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=[shipped_tokenizer(open_clip=oc) for oc in open_clip],
        scheduler_config=scheduler_config,
        native_size=native_size,
        inpaint=detection.inpaint,
        extras={
            "leftover_keys": detection.leftover_keys,
            "original_config": detection.original_config,
            "source": str(path),
        },
    )


def shipped_tokenizer(*, open_clip: bool) -> CLIPTokenizer:
    """The CLIP BPE tokenizer bundled with brushwork. OpenCLIP pads with "!" (id 0), not end-of-text."""
    extra = {"pad_token": "!"} if open_clip else {}
    return CLIPTokenizer.from_pretrained(str(SHIPPED_TOKENIZER), **extra)


def _take(state_dict: StateDict, prefix: str) -> StateDict:
    """Pop every key under `prefix` out of `state_dict` (so the caller's dict shrinks as we go)."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    return {k: state_dict.pop(k) for k in keys}


def _materialize(
    name: str,
    factory: Callable[[], torch.nn.Module],
    weights: StateDict,
    dtype: torch.dtype,
    device: str | torch.device,
) -> Any:
    """Build a module without allocating its weights, then adopt `weights` as its parameters.

    `weights` is emptied as it is read, so a tensor cast to another dtype or device frees its
    source right away.
    """
    with accelerate.init_empty_weights():
        module = factory()
    ready: StateDict = {}
    for key in list(weights):
        tensor = weights.pop(key)
        tensor = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype).contiguous()
        if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
            # safetensors returns tensors inside Python bytes objects, off 64-byte alignment; CPU
            # kernels then take other (slower) paths whose results differ in the last bits.
            tensor = tensor.clone()
        ready[key] = tensor
    try:
        result = module.load_state_dict(ready, strict=False, assign=True)
    except RuntimeError as err:  # shape mismatches, typically from a model.yaml that doesn't fit the file
        raise ModelLoadError(
            f"the checkpoint's {name} does not match its architecture (from the file's shapes and its "
            f"model.yaml, if any): {str(err).splitlines()[-1].strip()}"
        ) from err
    finally:
        ready.clear()
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"the checkpoint's {name} does not match its detected architecture "
            f"(missing: {result.missing_keys[:5]}, unexpected: {result.unexpected_keys[:5]}); is the file complete?"
        )
    return module.to(device).eval()


def _load_unet(
    sd: StateDict, detection: Detection, dtype: torch.dtype, device: str | torch.device
) -> UNet2DConditionModel:
    config = diffusers_unet_config(detection)
    ldm = _take(sd, ldm_layout.UNET_PREFIX)
    weights = convert_ldm_unet_checkpoint(ldm, config)
    ldm.clear()
    return _materialize("U-Net", lambda: UNet2DConditionModel.from_config(config), weights, dtype, device)


def _load_vae(sd: StateDict, detection: Detection, dtype: torch.dtype, device: str | torch.device) -> AutoencoderKL:
    config = create_vae_diffusers_config_from_ldm(detection.original_config, {})
    ldm = _take(sd, ldm_layout.VAE_PREFIX)
    weights = convert_ldm_vae_checkpoint(ldm, config)
    ldm.clear()
    return _materialize("VAE", lambda: AutoencoderKL.from_config(config), weights, dtype, device)


def _load_text_encoder(
    sd: StateDict, layout: TextEncoderLayout, dtype: torch.dtype, device: str | torch.device
) -> CLIPTextModel | CLIPTextModelWithProjection:
    config = CLIPTextConfig(**layout.config)
    cls = CLIPTextModelWithProjection if layout.with_projection else CLIPTextModel
    ldm = {k: v for k, v in _take(sd, layout.prefix).items() if not k.endswith(("position_ids", "logit_scale"))}
    if layout.kind == "clip":
        weights = convert_ldm_clip_checkpoint(ldm, remove_prefix=layout.prefix)
    else:
        if layout.drop_last_block:
            unused = f"{layout.prefix}transformer.resblocks.{config.num_hidden_layers}."
            ldm = {k: v for k, v in ldm.items() if not k.startswith(unused)}
        with accelerate.init_empty_weights():
            shell = cls(config)  # the converter reads only its config
        weights = convert_open_clip_checkpoint(shell, ldm, prefix=layout.prefix)
        if not layout.with_projection:
            weights.pop("text_projection.weight", None)
    ldm.clear()
    if cls is CLIPTextModel:  # transformers >= 5.6 flattened CLIPTextModel's `text_model.` level
        weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    return _materialize(f"text encoder '{layout.prefix}*'", lambda: cls(config), weights, dtype, device)


def diffusers_unet_config(detection: Detection) -> dict[str, Any]:
    """`UNet2DConditionModel` config from the ldm one: diffusers' converter, plus what it gets wrong
    for widths other than the real models' (head counts, SDXL's conditioning size)."""
    # An empty dict: the converter only sniffs it for a default image size, which we set ourselves.
    config = create_unet_diffusers_config_from_ldm(detection.original_config, {})
    unet = detection.unet_params
    channels = config["block_out_channels"]
    # ldm's rule: num_head_channels wins when set (not -1), else num_heads; diffusers calls the
    # number of heads `attention_head_dim`.
    head_channels = unet.get("num_head_channels", -1)
    if head_channels not in (None, -1):
        heads = [c // int(head_channels) for c in channels]
        config["attention_head_dim"] = heads[0] if len(set(heads)) == 1 else heads
    else:
        config["attention_head_dim"] = int(unet.get("num_heads", 8))
    depth = config["transformer_layers_per_block"]
    if isinstance(depth, list):  # ldm writes 0 for levels without attention; diffusers wants a count
        config["transformer_layers_per_block"] = [d or 1 for d in depth]
    if model_family(detection.family).size_conditioning:
        pooled = next(te.config["projection_dim"] for te in detection.text_encoders if te.with_projection)
        config["class_embed_type"] = None
        config["addition_embed_type"] = "text_time"
        # adm input = pooled text embedding + 6 size/crop ids of addition_time_embed_dim each
        config["addition_time_embed_dim"] = (int(unet["adm_in_channels"]) - pooled) // 6
    return config


def _probe(unet: UNet2DConditionModel, path: Path) -> bool:
    try:
        return looks_like_v_prediction(unet)
    except RuntimeError as err:  # e.g. a dtype this device has no kernels for
        log.warning("%s: the v-prediction test forward failed (%s); assuming epsilon. Add a model.yaml "
                    "with parameterization: \"v\" if the pictures come out wrong", path.name, err)
        return False


def _upcast_attention(unet: UNet2DConditionModel) -> None:
    for module in unet.modules():
        if isinstance(module, Attention):
            module.upcast_attention = True
    unet.register_to_config(upcast_attention=True)


def _metadata_prediction_type(metadata: Mapping[str, str]) -> str | None:
    value = (metadata.get("modelspec.prediction_type") or "").strip().lower()
    if value in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if value in ("epsilon", "eps"):
        return "epsilon"
    return None


def _metadata_resolution(metadata: Mapping[str, str]) -> int | None:
    """`modelspec.resolution` ("1024x1024") as one side: the square of equal area, a multiple of 8."""
    try:
        width, height = (int(part) for part in metadata["modelspec.resolution"].lower().split("x"))
    except (KeyError, ValueError):
        return None
    if width <= 0 or height <= 0:
        return None
    return max(8, round(math.sqrt(width * height) / 8) * 8)


# --- saving -------------------------------------------------------------------------------------------


def save_single_file(
    components: Components,
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `components` as one ldm-layout .safetensors file.

    The metadata gets `modelspec.resolution` and `modelspec.prediction_type` (the Stability AI
    model-spec keys, which `load_single_file` reads back), unless `metadata` sets them itself. A model whose
    VAE scaling or noise schedule is not what the loader assumes from the weights alone (the embedded model,
    or anything fine-tuned or merged from it) also gets the sibling yaml that says so (`own_config_yaml`).
    """
    state_dict = to_ldm_state_dict(components)
    own_config = own_config_yaml(components, detect(state_dict))
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    state_dict = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    side = components.native_size
    header = {
        "modelspec.resolution": f"{side}x{side}",
        "modelspec.prediction_type": "v" if components.prediction_type == "v_prediction" else "epsilon",
    }
    header.update(metadata or {})
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    save_file(state_dict, str(partial), metadata=header)
    stale = sibling_yaml(path)
    if stale is not None:
        stale.unlink()  # it described the file this one replaces
    if own_config is not None:
        path.with_suffix(".yaml").write_text(own_config, encoding="utf-8")
    os.replace(partial, path)  # never leave a half-written checkpoint under the real name


def own_config_yaml(components: Components, detection: Detection) -> str | None:
    """An A1111 `model.yaml` holding the latent scaling, noise schedule and parameterization of `components`
    when they differ from what `detection` (the weights alone) gives the loader; None when nothing does."""
    schedule = components.scheduler_config
    own = {
        "scale_factor": float(components.vae.config.scaling_factor),
        "linear_start": float(schedule["beta_start"]),
        "linear_end": float(schedule["beta_end"]),
        "timesteps": int(schedule["num_train_timesteps"]),
    }
    assumed = detection.original_config["model"]["params"]
    if all(math.isclose(value, float(assumed[key]), rel_tol=1e-6) for key, value in own.items()):
        return None
    own["parameterization"] = "v" if components.prediction_type == "v_prediction" else "eps"
    return ("# brushwork: this model's own VAE latent scaling and noise schedule (A1111 model.yaml layout)\n"
            + yaml.safe_dump({"model": {"params": own}}, sort_keys=False))


def to_ldm_state_dict(components: Components) -> StateDict:
    """All of `components`' weights under their single-file (ldm) names."""
    unet, vae = components.unet, components.vae
    state_dict = ldm_layout.unet_to_ldm(unet.state_dict(), unet.config)
    state_dict.update(ldm_layout.vae_to_ldm(vae.state_dict(), vae.config))
    for slot, encoder in zip(components.model_family.text_encoders, components.text_encoders, strict=True):
        if slot.kind == "clip":
            state_dict.update(ldm_layout.clip_to_ldm(encoder.state_dict(), slot.ldm_prefix))
        else:
            state_dict.update(ldm_layout.open_clip_to_ldm(encoder.state_dict(), slot.ldm_prefix,
                                                          num_layers=encoder.config.num_hidden_layers,
                                                          unused_last_block=slot.drop_last_block))
    return state_dict
