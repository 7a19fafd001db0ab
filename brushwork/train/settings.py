"""How long and how hard to train: the hyper-parameters of both stages, the named presets, and how the
fine-tuners take their steps.

`quick` finishes end to end in under 30 minutes on 2 CPU cores (a usable but not yet accurate model);
`full` is the recipe for the shipped model. Explicit command-line flags override a preset's values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from brushwork.errors import BrushworkError
from brushwork.train.spec import DEFAULT_SPEC, TOY_SPEC, ModelSpec

ARCHITECTURES: dict[str, ModelSpec] = {"base": DEFAULT_SPEC, "toy": TOY_SPEC}

PRECISIONS = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class StepSettings:
    """How fine-tuning steps are taken (train/optimize.py: precision, accumulation, checkpointing, EMA) and
    their loss weighted (train/finetune.py's Objective)."""

    mixed_precision: str = "no"  # "fp16" (GPU) or "bf16": the forward pass autocasts, the weights stay float32
    accumulation: int = 1  # micro-batches per optimizer step and process
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    ema_decay: float = 0.0  # 0: off; else the saved weights are this exponential average of the trained ones
    min_snr_gamma: float = 0.0  # 0: plain MSE; else Min-SNR loss weights with this gamma (5 is the paper's)


@dataclass(frozen=True)
class TrainSettings:
    arch: str = "base"  # a key of ARCHITECTURES
    seed: int = 0
    max_images: int | None = None  # use at most this many pictures of the data folder (None: all)
    # Stage 1: the VAE.
    vae_steps: int = 4000
    vae_batch_size: int = 32
    vae_crop: int = 32  # train on random crops of this side (0: whole pictures); a quarter of the cost at 64 px
    vae_lr: float = 1e-3
    vae_latent_weight: float = 1e-4  # L2 pull of the latents towards 0, against the mean L1 per pixel
    vae_edge_weight: float = 0.5  # L1 on horizontal/vertical pixel differences: keeps edges crisp
    # Stage 2: text encoder + U-Net (the prediction type is the ModelSpec's).
    steps: int = 10000
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1  # cosine decay from lr down to lr * min_lr_ratio at the last step
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    caption_dropout: float = 0.1  # captions replaced by "" so classifier-free guidance has an unconditional model
    snr_gamma: float = 5.0  # Min-SNR loss weighting (Hang et al. 2023); 0 disables it
    ema_decay: float = 0.9995
    # Where objects go (brushwork.train.layout); they need a `brushwork data shapes` folder's captions and metadata.
    layout_fraction: float = 0.0  # share of each batch: positioned captions, noised in the schedule's upper half
    foreground_weight: float = 0.0  # extra loss weight on the latent pixels under objects
    position_loss_weight: float = 0.0  # weight of the text encoder's position probe
    bf16: bool = False  # bf16 autocast: ~10% more steps/s at batch 64 on a 2-core Zen 5, quality untested
    # Bookkeeping.
    sample_every: int = 1000  # steps between sample grids (0: none)
    checkpoint_every: int = 250  # steps between saved training states

    @property
    def spec(self) -> ModelSpec:
        return ARCHITECTURES[self.arch]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> "TrainSettings":
        if self.arch not in ARCHITECTURES:
            raise BrushworkError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        for name in ("vae_steps", "steps", "batch_size", "vae_batch_size"):
            if getattr(self, name) < 1:
                raise BrushworkError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.max_images is not None and self.max_images < 1:
            raise BrushworkError(f"--max-images must be at least 1 (got {self.max_images})")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise BrushworkError(f"caption dropout must be in [0, 1) (got {self.caption_dropout})")
        if not 0.0 <= self.layout_fraction <= 1.0:
            raise BrushworkError(f"the layout fraction must be in [0, 1] (got {self.layout_fraction})")
        for name in ("foreground_weight", "position_loss_weight"):
            if getattr(self, name) < 0:
                raise BrushworkError(f"{name.replace('_', ' ')} must be at least 0 (got {getattr(self, name)})")
        return self


PRESETS: dict[str, TrainSettings] = {
    # ~6.5 min VAE + ~1.5 min encoding + ~18 min diffusion on 2 otherwise idle Zen 5 cores (see __init__.py).
    "quick": TrainSettings(
        vae_steps=1500, max_images=10000, steps=1300, lr=1e-3, warmup_steps=100, ema_decay=0.995,
        sample_every=500, checkpoint_every=200,
    ),
    # The shipped model's recipe, on 20,000 pictures (`brushwork data shapes DIR --count 20000`): ~17 min VAE +
    # ~3 min encoding + ~100 min diffusion on 2 idle cores. Its record is in docs/benchmarks.md.
    "full": TrainSettings(
        vae_steps=4000, steps=7000, lr=1e-3, warmup_steps=200, ema_decay=0.999,
        layout_fraction=0.5, foreground_weight=5.0, position_loss_weight=0.5,
        sample_every=1000, checkpoint_every=250,
    ),
    # For tests: seconds, not minutes.
    "toy": TrainSettings(
        arch="toy", vae_steps=4, vae_batch_size=4, steps=6, batch_size=4, warmup_steps=2, lr=1e-3,
        ema_decay=0.9, sample_every=0, checkpoint_every=3,
        layout_fraction=0.5, foreground_weight=5.0, position_loss_weight=0.5,
    ),
}


def resolve(preset: str, **overrides: Any) -> TrainSettings:
    """The preset's settings with every override that is not None applied."""
    if preset not in PRESETS:
        raise BrushworkError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(PRESETS[preset], **given).validate()
