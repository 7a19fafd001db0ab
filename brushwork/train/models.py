"""The tiny SD 1.x-architecture model brushwork trains from scratch: its widths, and the empty model.

Same classes and single-file key layout as Stable Diffusion 1.x - `AutoencoderKL`, a `CLIPTextModel`
over the real 49,408-token CLIP vocabulary, a `UNet2DConditionModel` with cross-attention - only
narrower, and with a 3-level VAE (pictures 4x larger than latents, not 8x). Heads follow
`brushwork.models.detect`'s SD 1.x convention (8 per U-Net level, CLIP width // 64), so the model
survives a trip through a single file unchanged.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from brushwork.models.components import Components
from brushwork.models.detect import clip_heads
from brushwork.models.families import SD1
from brushwork.train.export import assemble
from brushwork.train.spec import DEFAULT_SPEC, TOY_SPEC, ModelSpec

__all__ = ["DEFAULT_SPEC", "TOY_SPEC", "ModelSpec", "build_components", "count_parameters"]

CLIP_VOCAB = 49408  # the real CLIP BPE vocabulary, so the shipped tokenizer works unchanged
CLIP_POSITIONS = 77  # one A1111 prompt chunk: BOS + 75 tokens + EOS


def build_vae(spec: ModelSpec, scaling_factor: float = 1.0) -> AutoencoderKL:
    levels = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=spec.vae_channels,
        layers_per_block=spec.vae_layers_per_block,
        latent_channels=spec.latent_channels,
        sample_size=spec.image_size,
        scaling_factor=scaling_factor,
    )


def build_text_encoder(spec: ModelSpec) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=spec.text_width,
        intermediate_size=spec.text_mlp,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=clip_heads(spec.text_width),
        max_position_embeddings=CLIP_POSITIONS,
        hidden_act="quick_gelu",  # as CLIP ViT-L, and as `detect` assumes for an SD 1.x encoder
        projection_dim=spec.text_width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def build_unet(spec: ModelSpec) -> UNet2DConditionModel:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in spec.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(spec.unet_attention))
    return UNet2DConditionModel(
        sample_size=spec.latent_size,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=spec.unet_channels,
        layers_per_block=spec.unet_layers_per_block,
        cross_attention_dim=spec.text_width,
        attention_head_dim=SD1.unet_heads,  # diffusers' name for the number of heads
        use_linear_projection=False,  # SD 1.x: 1x1-conv proj_in/proj_out
        norm_num_groups=32,
    )


def build_components(spec: ModelSpec, seed: int = 0, scaling_factor: float = 1.0) -> Components:
    """A freshly initialised (untrained) model of `spec`; the same seed gives the same weights."""
    torch.manual_seed(seed)
    vae = build_vae(spec, scaling_factor)
    return assemble(vae, build_text_encoder(spec), build_unet(spec), scaling_factor, spec.image_size,
                    spec.beta_end, spec.prediction_type)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
