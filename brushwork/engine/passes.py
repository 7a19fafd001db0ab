"""One denoising pass: txt2img from noise, or img2img from latents at a denoising strength.

Hires fix is a second pass of the same kind, so both share this code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from brushwork.engine import latents as latent_stage
from brushwork.engine.conditioning import ScheduledConditioning
from brushwork.engine.denoise import GuidedDenoiser, LatentBlend, StepInfo, sample
from brushwork.engine.extensions import Extension
from brushwork.engine.samplers import make_scheduler
from brushwork.models.components import Components


@dataclass
class PassPlan:
    sampler: str
    steps: int
    width: int
    height: int
    cfg_scale: list[float]  # per image, like the schedules: a group of jobs shares one batch
    positive: list[ScheduledConditioning]
    negative: list[ScheduledConditioning]
    strength: float = 1.0
    init_latents: torch.Tensor | None = None  # scaled latents to start from ([1 or B, C, h, w])
    latent_mask: torch.Tensor | None = None  # [1, 1, h, w], 1 = repaint (inpainting)
    masked_content: str = "original"  # A1111's "masked content" for the masked area
    image_conditioning: torch.Tensor | None = None  # 9-channel inpainting models' extra inputs
    extensions: list[Extension] = field(default_factory=list)  # the denoiser's, each for its pictures


def steps_run(steps: int, strength: float) -> int:
    """A1111 and diffusers run `int(steps × strength)` of the schedule's last steps in img2img."""
    return min(int(steps * strength), steps)


def run_pass(
    components: Components,
    plan: PassPlan,
    generators: list[torch.Generator],
    seeds: list[int],
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    noise_seed_delta: int = 0,
) -> torch.Tensor:
    """Denoise one batch; `generators` and `seeds` name each picture's randomness, in batch order.

    `noise_seed_delta` is A1111's "Eta noise seed delta" (ENSD): when not 0, the sampler's per-step noise
    comes from fresh generators seeded seed + delta instead of going on from the starting noise's."""
    if len(generators) != len(seeds):
        raise ValueError(f"{len(generators)} generators for {len(seeds)} seeds")
    unet = components.unet
    device, dtype = unet.device, unet.dtype
    scheduler = make_scheduler(plan.sampler, components.scheduler_config, seeds)
    scheduler.set_timesteps(plan.steps, device=device)
    shape = latent_stage.latent_shape(components.vae, plan.height, plan.width)
    noise = latent_stage.initial_noise(generators, shape, device, dtype)
    timesteps = scheduler.timesteps

    if plan.init_latents is None:
        latents = noise * scheduler.init_noise_sigma
    else:
        init = plan.init_latents.expand(len(seeds), -1, -1, -1)
        if plan.latent_mask is not None and plan.masked_content in ("latent noise", "latent nothing"):
            fresh = latent_stage.initial_noise(generators, shape, device, dtype) if plan.masked_content == "latent noise" else 0
            init = init * (1 - plan.latent_mask) + fresh * plan.latent_mask
        skipped = plan.steps - steps_run(plan.steps, plan.strength)
        timesteps = timesteps[skipped * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(skipped * scheduler.order)
        if len(timesteps) == 0:
            return init  # strength 0: the picture as it was
        if plan.latent_mask is not None and plan.strength >= 1.0:
            latents = noise * scheduler.init_noise_sigma  # repaint from pure noise, as diffusers does
        else:
            latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(len(seeds)))
    if noise_seed_delta:
        generators = latent_stage.image_generators([seed + noise_seed_delta for seed in seeds])

    denoiser = GuidedDenoiser(
        unet, plan.positive, plan.negative, plan.cfg_scale, steps=max(1, steps_run(plan.steps, plan.strength)),
        total_timesteps=len(timesteps), time_ids=_sdxl_time_ids(components, plan, device, dtype),
        image_conditioning=_image_conditioning(components, plan, len(seeds)), extensions=plan.extensions,
    )
    blend = None
    if plan.latent_mask is not None and not components.inpaint:
        blend = LatentBlend(scheduler, timesteps, plan.init_latents.expand(len(seeds), -1, -1, -1), noise, plan.latent_mask)
    return sample(denoiser, scheduler, latents, generators, timesteps=timesteps, after_step=blend,
                  on_step=on_step, should_stop=should_stop)


def _image_conditioning(components: Components, plan: PassPlan, batch: int) -> torch.Tensor | None:
    if not components.inpaint:
        return None
    if plan.image_conditioning is not None:
        return plan.image_conditioning.expand(batch, -1, -1, -1)
    return latent_stage.txt2img_inpaint_conditioning(components.vae, batch, plan.height, plan.width)


def _sdxl_time_ids(components: Components, plan: PassPlan, device, dtype) -> torch.Tensor | None:
    """SDXL's size conditioning: original size, crop top-left (0, 0), target size."""
    if not components.model_family.size_conditioning:
        return None
    size = (plan.height, plan.width)
    return torch.tensor([[*size, 0, 0, *size]], device=device, dtype=dtype)
