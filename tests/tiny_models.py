"""Tiny random Stable Diffusion models, one per variant brushwork loads, for fast tests.

Each is a real diffusers/transformers model of the family's shape at toy width: a 2-level U-Net
(32, 64 channels), a 2-level VAE (latents 2x smaller than the image, not 8x), CLIP text encoders
32 (ViT-L stand-in) and 64 (OpenCLIP stand-in) wide with the real 49408-token vocabulary so the
shipped tokenizer works. Native size is 64 px (a 32x32 latent). Heads follow `brushwork.models.detect`'s
conventions, so the architecture survives a trip through a single file and `detect`.

Every parameter is nudged by seeded noise, so no two tensors are alike (a LayerNorm left at ones
could hide a swapped mapping in a round-trip test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from brushwork.models.components import Components
from brushwork.models.detect import BASE_SCHEDULER_CONFIG, clip_heads, unet_head_channels
from brushwork.models.families import SD1, model_family
from brushwork.models.single_file import save_single_file, shipped_tokenizer

VARIANTS = ("sd1", "sd2", "sd2-v", "sdxl", "sd1-inpaint")
NATIVE_SIZE = 64
UNET_CHANNELS = (32, 64)
CLIP_L_WIDTH = 32  # stands in for CLIP ViT-L (768)
OPEN_CLIP_WIDTH = 64  # stands in for OpenCLIP ViT-H (1024) / ViT-bigG (1280)
BIG_G_PROJECTION = 48  # unlike bigG's 1280, differs from the width, so transposes are checked
SDXL_TIME_EMBED = 8  # bigG: 256; the adm input is pooled text + 6 ids of this size


def parse_variant(variant: str) -> tuple[str, bool, bool]:
    """'sd2-v' -> ('sd2', v_prediction=True, inpaint=False)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose one of {VARIANTS}")
    family = variant.split("-")[0]
    return family, variant.endswith("-v"), variant.endswith("-inpaint")


def tiny_components(variant: str = "sd1", seed: int = 0) -> Components:
    """A seeded tiny model of `variant` ("sd1", "sd2", "sd2-v", "sdxl", "sd1-inpaint")."""
    family, v_prediction, inpaint = parse_variant(variant)
    torch.manual_seed(seed)
    if family == "sdxl":
        text_encoders: list[Any] = [_clip(CLIP_L_WIDTH, "quick_gelu"), _clip(OPEN_CLIP_WIDTH, "gelu", BIG_G_PROJECTION)]
    elif family == "sd2":
        text_encoders = [_clip(OPEN_CLIP_WIDTH, "gelu")]
    else:
        text_encoders = [_clip(CLIP_L_WIDTH, "quick_gelu")]
    context_dim = sum(te.config.hidden_size for te in text_encoders)
    unet = UNet2DConditionModel(**_unet_kwargs(family, inpaint, context_dim, upcast=family == "sd2" and v_prediction))
    vae = AutoencoderKL(
        sample_size=NATIVE_SIZE,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        scaling_factor=model_family(family).vae_scale_factor,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in (unet, vae, *text_encoders):
            for param in module.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
        if family == "sd2":
            # Steer A1111's v-prediction probe (mean(out - x) at t=999 on a 0.5 latent, v if < -1)
            # the way the real models answer it: an epsilon model's output sits near its input.
            unet.conv_out.bias.add_(-2.5 if v_prediction else 0.5)
    for module in (unet, vae, *text_encoders):
        module.eval()
    scheduler_config = dict(BASE_SCHEDULER_CONFIG, prediction_type="v_prediction" if v_prediction else "epsilon")
    return Components(
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=[shipped_tokenizer(open_clip=te.config.hidden_act == "gelu") for te in text_encoders],
        scheduler_config=scheduler_config,
        native_size=NATIVE_SIZE,
        inpaint=inpaint,
    )


def _unet_kwargs(family: str, inpaint: bool, context_dim: int, *, upcast: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "upcast_attention": upcast,  # SD 2.1-v has it (fp16 attention overflows otherwise); so does our loader
        "sample_size": NATIVE_SIZE // 2,
        "in_channels": 9 if inpaint else 4,
        "out_channels": 4,
        "block_out_channels": UNET_CHANNELS,
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "cross_attention_dim": context_dim,
        "attention_head_dim": unet_heads(family),
        "use_linear_projection": family != "sd1",
    }
    if family == "sdxl":
        # Like SDXL: no attention on the first level, deeper transformers below it.
        kwargs.update(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_EMBED,
            projection_class_embeddings_input_dim=BIG_G_PROJECTION + 6 * SDXL_TIME_EMBED,
        )
    else:
        # Like SD 1.x/2.x: attention on every level but the last.
        kwargs.update(
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        )
    return kwargs


def unet_heads(family: str) -> int | list[int]:
    """diffusers' `attention_head_dim` (really: heads per level) under the family convention, as detect reads it."""
    if family == "sd1":
        return SD1.unet_heads
    return [channels // unet_head_channels(UNET_CHANNELS[0]) for channels in UNET_CHANNELS]


def _clip(width: int, act: str, projection: int | None = None) -> CLIPTextModel | CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=clip_heads(width),
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection or width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def write_tiny_checkpoint(
    variant: str,
    path: str | Path,
    *,
    seed: int = 0,
    yaml_config: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Components:
    """Save a tiny `variant` model as a single-file checkpoint (and an A1111 sibling yaml if given);
    returns the components written, to compare against."""
    components = tiny_components(variant, seed)
    path = Path(path)
    save_single_file(components, path, dtype=dtype, metadata=metadata)
    if yaml_config is not None:
        path.with_suffix(".yaml").write_text(yaml.safe_dump(yaml_config), encoding="utf-8")
    return components


def to_pipeline(components: Components) -> Any:
    """The diffusers pipeline holding `components` (for save_pretrained / from_single_file)."""
    scheduler = EulerDiscreteScheduler.from_config(components.scheduler_config)
    if components.family == "sdxl":
        return StableDiffusionXLPipeline(
            vae=components.vae,
            text_encoder=components.text_encoders[0],
            text_encoder_2=components.text_encoders[1],
            tokenizer=components.tokenizers[0],
            tokenizer_2=components.tokenizers[1],
            unet=components.unet,
            scheduler=scheduler,
        )
    cls = StableDiffusionInpaintPipeline if components.inpaint else StableDiffusionPipeline
    return cls(
        vae=components.vae,
        text_encoder=components.text_encoders[0],
        tokenizer=components.tokenizers[0],
        unet=components.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_tiny_diffusers_folder(variant: str, path: str | Path, *, seed: int = 0) -> Components:
    """Save a tiny `variant` model as a diffusers folder (`save_pretrained`); returns its components."""
    components = tiny_components(variant, seed)
    to_pipeline(components).save_pretrained(str(path))
    return components
