"""diffusers-format model folders (`model_index.json` + one subfolder per component) -> Components.

Only local files are read. The family follows from the parts: a `text_encoder_2` means SDXL; an
OpenCLIP text encoder (gelu activation) SD 2.x; otherwise SD 1.x. The native size is the U-Net's
`sample_size` times the VAE's downscaling (64 x 8 = 512 for SD 1.5, 96 x 8 = 768 for SD 2.1-v).
Tokenizers come from the folder when it has them, else the CLIP tokenizer brushwork ships.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from brushwork.errors import ModelLoadError
from brushwork.models.components import Components
from brushwork.models.detect import BASE_SCHEDULER_CONFIG
from brushwork.models.families import family_of_encoders
from brushwork.models.single_file import shipped_tokenizer


def load_diffusers_folder(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Components:
    """Load a Stable Diffusion 1.x / 2.x / SDXL pipeline folder saved by diffusers."""
    root = Path(path).expanduser()
    index = _model_index(root)
    for part in ("unet", "vae", "text_encoder"):
        if not index.get(part) or not (root / part).is_dir():
            raise ModelLoadError(
                f"the diffusers folder {root} has no '{part}'; brushwork needs a full SD pipeline folder"
            )
    sdxl = bool(index.get("text_encoder_2")) and (root / "text_encoder_2").is_dir()

    unet = _load(root, "unet", UNet2DConditionModel, dtype)
    vae = _load(root, "vae", AutoencoderKL, dtype)
    text_encoders: list[CLIPTextModel | CLIPTextModelWithProjection] = [
        _load(root, "text_encoder", CLIPTextModel, dtype)
    ]
    if sdxl:
        text_encoders.append(_load(root, "text_encoder_2", CLIPTextModelWithProjection, dtype))
    for module in (unet, vae, *text_encoders):
        module.to(device).eval()

    # OpenCLIP encoders use gelu, OpenAI's CLIP quick_gelu; the family is the one with these encoders.
    kinds = ["open_clip" if encoder.config.hidden_act == "gelu" else "clip" for encoder in text_encoders]
    found = family_of_encoders(kinds)
    if found is None:
        raise ModelLoadError(f"{root}: text encoders of kinds {kinds} match no model family brushwork knows")
    family = found.key
    tokenizers = [_tokenizer(root, folder, open_clip=kind == "open_clip")
                  for folder, kind in zip(("tokenizer", "tokenizer_2"), kinds)]
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return Components(
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        scheduler_config=_scheduler_config(root),
        native_size=int(unet.config.sample_size) * vae_factor,
        inpaint=unet.config.in_channels == 9,
        extras={"source": str(root)},
    )


def _model_index(root: Path) -> dict[str, Any]:
    if not root.exists():
        raise ModelLoadError(f"model folder not found: {root}")
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"{root} is not a diffusers model folder (no model_index.json)")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read {index_file}: {err}") from err
    if not isinstance(index, dict):
        raise ModelLoadError(f"{index_file} is not a diffusers model index")
    return index


def _load(root: Path, part: str, cls: Any, dtype: torch.dtype) -> Any:
    """One component via its class's `from_pretrained`, local files only, fp16-only folders included."""
    folder = root / part
    variant = "fp16" if _only_fp16_weights(folder) else None
    # diffusers and transformers name the dtype argument differently.
    dtype_arg = {"torch_dtype": dtype} if cls in (UNet2DConditionModel, AutoencoderKL) else {"dtype": dtype}
    try:
        return cls.from_pretrained(str(root), subfolder=part, local_files_only=True, variant=variant, **dtype_arg)
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"cannot load '{part}' from the diffusers folder {root}: {err}") from err


def _only_fp16_weights(folder: Path) -> bool:
    """diffusers' 'fp16' variant folders name their weights *.fp16.safetensors / *.fp16.bin."""
    weights = [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    return bool(weights) and all(".fp16." in name for name in weights)


def _tokenizer(root: Path, folder: str, *, open_clip: bool) -> CLIPTokenizer:
    if (root / folder).is_dir():
        try:
            return CLIPTokenizer.from_pretrained(str(root), subfolder=folder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load '{folder}' from the diffusers folder {root}: {err}") from err
    return shipped_tokenizer(open_clip=open_clip)


# What a saved scheduler says about the noise schedule itself. Its other settings (Karras sigmas,
# solver order, ...) belong to the sampler the engine picks per job, so they are not carried over.
SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
)


def _scheduler_config(root: Path) -> dict[str, Any]:
    """The folder's noise schedule over SD's defaults."""
    config = dict(BASE_SCHEDULER_CONFIG)
    config_file = root / "scheduler" / "scheduler_config.json"
    if config_file.is_file():
        try:
            saved = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot read {config_file}: {err}") from err
        config.update({k: saved[k] for k in SCHEDULE_KEYS if k in saved})
    return config
