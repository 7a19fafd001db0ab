"""The widths of the tiny SD 1.x-architecture model (kept free of heavy imports, so `--help` stays fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """The widths of the tiny model. Every width must be a multiple of 32 (GroupNorm's 32 groups)."""

    image_size: int = 64
    # 3 levels: latents 4x smaller than the picture. GroupNorm always has 32 groups in the single-file
    # layout, so 32 channels would be one channel per group - instance norm, which erases the flat colours
    # these pictures are made of; with 64 a VAE learns ~3x faster per step.
    vae_channels: tuple[int, ...] = (64, 64, 64)
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    text_width: int = 128
    text_layers: int = 4
    text_mlp: int = 256
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers_per_block: int = 1
    # Which U-Net levels have attention (the middle block always has it). Not the 16x16 level: with
    # 256 tokens its attention costs ~45% of a training step and the 8x8 and 4x4 levels see the whole picture.
    unet_attention: tuple[bool, ...] = (False, True, True)
    # The last beta of the scaled-linear noise schedule (SD's is 0.012). A sampler's first step (t=951 at 20
    # steps) starts from pure noise, but in training x_t there still holds sqrt(alpha_bar) of the picture. On a
    # 16x16 latent SD's schedule leaves enough of it that an ideal observer tells the background colour apart
    # with d' = 3.6 and an object's position with d' = 1.3 (measured on this model's latents), so the U-Net
    # reads the layout from the noise instead of the prompt, and when sampling puts objects wherever the
    # starting noise happens to point. At 0.03 those d' fall to 0.19 and 0.07 (terminal sigma 420, not 14.6).
    beta_end: float = 0.03
    # What the U-Net predicts. "v_prediction" (as SD 2.x-v): at high noise v is nearly -x0, so the loss there
    # is a loss on the picture itself and the model learns the layout the prompt asks for. With "epsilon" the
    # picture error of a noisy step counts SNR times (~1e-3 at t=951): layout goes untaught, and at sampling
    # time the x0 estimate multiplies the noise error by sigma (~200 at the first step).
    prediction_type: str = "v_prediction"

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_factor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# The shipped model: 1.16M VAE + 6.86M text encoder + 6.72M U-Net parameters, 29.5 MB in fp16.
DEFAULT_SPEC = ModelSpec()
# For tests: the same structure at toy widths (32x32 pictures; a dozen steps take about a second).
TOY_SPEC = ModelSpec(
    image_size=32, vae_channels=(32, 32, 32), text_width=32, text_layers=1, text_mlp=64,
    unet_channels=(32, 32, 64), unet_attention=(False, True, True),
)
