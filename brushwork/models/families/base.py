"""What one Stable Diffusion family is, as data: everything the loaders and the engine do differently per family.

ComfyUI's `supported_models.py` idea: the loaders, the LoRA key map and the engine read these fields instead of
asking `family == "sdxl"`, so a new family is one more file in this folder.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder: where a single-file checkpoint keeps it and how it is built."""

    ldm_prefix: str  # e.g. "cond_stage_model.transformer."
    kind: str  # "clip" (OpenAI CLIP, HF names) | "open_clip" (OpenCLIP names in the file)
    with_projection: bool = False  # a CLIPTextModelWithProjection (its pooled output conditions the U-Net)
    drop_last_block: bool = False  # the file has one more OpenCLIP block than is ever run (SD 2.x)


@dataclass(frozen=True)
class ModelFamily:
    key: str  # "sd1" | "sd2" | "sdxl": what Components.family holds
    name: str  # as users know it: "SD 1.x"
    text_encoders: tuple[TextEncoderSlot, ...]  # in the order their hidden states are concatenated
    native_size: int  # pixels per side it was trained at
    vae_scale_factor: float
    cross_attention_width: int  # the real models' text context width (tells a LoRA file's family)
    lora_text_prefixes: tuple[str, ...]  # kohya's names for the text encoders' layers, one per encoder
    kohya_versions: tuple[str, ...]  # markers in kohya's `ss_base_model_version` metadata
    latent_rgb: tuple[tuple[float, float, float], ...]  # latent channel -> RGB, for the cheap live preview
    unet_heads: int | None = None  # a fixed number of attention heads (SD 1.x); None: 64 channels per head
    v_prediction_native_size: int | None = None  # the size of its v-prediction models when it differs
    probe_v_prediction: bool = False  # its files do not say epsilon or v: ask the U-Net (A1111's test)
    upcast_attention_when_v: bool = False  # its v models overflow fp16 attention (SD 2.1-v)
    penultimate_layer: bool = False  # the U-Net reads the penultimate hidden state, with no final norm
    zero_empty_prompt: bool = False  # an empty prompt's encoding is zeros (its unconditional input)
    size_conditioning: bool = False  # the U-Net takes size/crop ids and the pooled text (SDXL's "time ids")

    def native_size_for(self, prediction_type: str) -> int:
        if prediction_type == "v_prediction" and self.v_prediction_native_size:
            return self.v_prediction_native_size
        return self.native_size
