"""Stable Diffusion 2.x: OpenCLIP ViT-H/14 (its last block unused), 512 px, or 768 px for the v-prediction models."""

from brushwork.models.families.base import ModelFamily, TextEncoderSlot
from brushwork.models.families.sd1 import SD1
from brushwork.models.ldm_layout import SD2_OPEN_CLIP_PREFIX

SD2 = ModelFamily(
    key="sd2",
    name="SD 2.x",
    text_encoders=(TextEncoderSlot(SD2_OPEN_CLIP_PREFIX, "open_clip", drop_last_block=True),),
    native_size=512,
    vae_scale_factor=0.18215,
    cross_attention_width=1024,
    lora_text_prefixes=("lora_te_",),
    kohya_versions=("v2",),
    latent_rgb=SD1.latent_rgb,  # the same VAE
    v_prediction_native_size=768,
    probe_v_prediction=True,
    upcast_attention_when_v=True,
)
