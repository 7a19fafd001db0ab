"""Stable Diffusion 1.x: OpenAI CLIP ViT-L/14, 512 px, 8 attention heads everywhere."""

from brushwork.models.families.base import ModelFamily, TextEncoderSlot
from brushwork.models.ldm_layout import SD1_CLIP_PREFIX

SD1 = ModelFamily(
    key="sd1",
    name="SD 1.x",
    text_encoders=(TextEncoderSlot(SD1_CLIP_PREFIX, "clip"),),
    native_size=512,
    vae_scale_factor=0.18215,
    cross_attention_width=768,
    lora_text_prefixes=("lora_te_",),
    kohya_versions=("sd_v1", "v1"),
    # Least-squares fits of latent channels to RGB, as A1111's "Approx cheap" preview uses.
    latent_rgb=((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
    unet_heads=8,
)
