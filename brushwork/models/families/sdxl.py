"""SDXL: CLIP ViT-L and OpenCLIP ViT-bigG side by side, 1024 px, size conditioning, zeros for an empty prompt."""

from brushwork.models.families.base import ModelFamily, TextEncoderSlot
from brushwork.models.ldm_layout import SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX

SDXL = ModelFamily(
    key="sdxl",
    name="SDXL",
    text_encoders=(
        TextEncoderSlot(SDXL_CLIP_PREFIX, "clip"),
        TextEncoderSlot(SDXL_OPEN_CLIP_PREFIX, "open_clip", with_projection=True),
    ),
    native_size=1024,
    vae_scale_factor=0.13025,
    cross_attention_width=2048,
    lora_text_prefixes=("lora_te1_", "lora_te2_"),
    kohya_versions=("sdxl",),
    latent_rgb=((0.3920, 0.4054, 0.4549), (-0.2634, -0.0196, 0.0653), (0.0568, 0.1687, -0.0755),
                (-0.3112, -0.2359, -0.2076)),
    penultimate_layer=True,
    zero_empty_prompt=True,
    size_conditioning=True,
)
