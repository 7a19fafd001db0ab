"""Stage 4: the denoising loop.

The loop knows only a scheduler and a `Denoiser` (`model_output = denoiser(latents, t, step)`).
Classifier-free guidance lives in `GuidedDenoiser`, a wrapper around the U-Net; ControlNet, adapters and
guidance tweaks are its extensions (engine/extensions.py), and LoRA is a weight patch on the U-Net for the
job (models/patches), so the loop never grows branches for them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from diffusers import UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from brushwork.engine.conditioning import Conditioning, ScheduledConditioning
from brushwork.engine.extensions import DenoiseContext, Extension, ordered
from brushwork.errors import Cancelled


class Denoiser(Protocol):
    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, step: int) -> torch.Tensor: ...


@dataclass
class StepInfo:
    """What a progress callback sees after each model evaluation."""

    step: int  # 1-based index into the scheduler's timesteps
    total: int
    latents: torch.Tensor  # the current latents (do not modify)


class GuidedDenoiser:
    """The U-Net with classifier-free guidance over prompt schedules, for a batch of images.

    Each image has its own positive and negative schedule and CFG scale, so compatible jobs with
    different prompts share one U-Net batch. The unconditional and conditional halves run as one
    batch of 2×B; when every image has `cfg_scale == 1` the unconditional half is skipped, since it
    would cancel out anyway.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        positive: list[ScheduledConditioning],
        negative: list[ScheduledConditioning],
        cfg_scale: list[float],
        steps: int,
        total_timesteps: int,
        time_ids: torch.Tensor | None = None,
        image_conditioning: torch.Tensor | None = None,
        extensions: list[Extension] = (),
    ):
        self.unet = unet
        self.positive = positive
        self.negative = negative
        self.cfg_scale = torch.tensor(cfg_scale, device=unet.device, dtype=unet.dtype).view(-1, 1, 1, 1)
        self.guided = any(scale != 1.0 for scale in cfg_scale)
        self.steps = steps
        self.total_timesteps = total_timesteps
        self.time_ids = time_ids
        # Extra input channels (inpainting models: mask + masked-image latents), one row per image.
        self.image_conditioning = image_conditioning
        self.extensions = ordered(extensions)

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, step: int) -> torch.Tensor:
        # Prompt editing counts sampling steps; second-order samplers evaluate twice per step.
        prompt_step = step * self.steps // self.total_timesteps + 1
        halves = [[c.at(prompt_step) for c in self.positive]]
        if self.guided:
            halves.insert(0, [c.at(prompt_step) for c in self.negative])
        model_input = torch.cat([latents] * len(halves))
        if self.image_conditioning is not None:
            extra = torch.cat([self.image_conditioning] * len(halves))
            model_input = torch.cat([model_input, extra.to(model_input.dtype)], dim=1)
        conditionings = [c for half in halves for c in half]
        context = DenoiseContext(
            step, self.total_timesteps, timestep, latents.shape[0], len(halves), model_input,
            {"encoder_hidden_states": torch.cat([c.context for c in conditionings]),
             "added_cond_kwargs": self._sdxl_inputs(conditionings)},
        )
        active = [extension for extension in self.extensions if extension.active(context)]
        for extension in active:
            extension.before_unet(context)
        context.raw = self.unet(model_input, timestep, **context.unet_kwargs).sample
        if self.guided:
            uncond, cond = context.raw.chunk(2)
            context.output = uncond + self.cfg_scale * (cond - uncond)
        else:
            context.output = context.raw
        for extension in active:
            extension.after_guidance(context)
        return context.output

    def _sdxl_inputs(self, conditionings: list[Conditioning]) -> dict | None:
        if self.time_ids is None:
            return None
        pooled = torch.cat([c.pooled for c in conditionings])
        return {"text_embeds": pooled, "time_ids": self.time_ids.expand(pooled.shape[0], -1)}


def sample(
    denoiser: Denoiser,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    generators: list[torch.Generator],
    *,
    timesteps: torch.Tensor | None = None,
    after_step: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Run `timesteps` (default: all of the scheduler's) from `latents`, already noised to the first.

    `generators` hold one seeded CPU generator per image. Every stochastic scheduler that draws
    noise in `step()` (Euler a, DPM2 a, DPM++ 2M/3M SDE, DDIM with eta > 0, LCM, Euler's churn)
    gets the whole list, and diffusers' `randn_tensor` then draws image k's slice from generator k
    alone; so each picture's ancestral noise depends only on its own seed, whatever the batch size
    or grouping. (DPM++ SDE's Brownian trees are seeded per image in `make_scheduler` instead.)
    `after_step` may replace the latents after each step (inpainting with an ordinary checkpoint
    pastes the known area back in).
    """
    if len(generators) != latents.shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {latents.shape[0]} images")
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    # Deterministic schedulers take no generator; stochastic ones draw their noise from these.
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    step_options = {"generator": generators} if takes_generator else {}
    for index, timestep in enumerate(timesteps):
        if should_stop is not None and should_stop():
            raise Cancelled()
        model_input = scheduler.scale_model_input(latents, timestep)
        model_output = denoiser(model_input, timestep, index)
        latents = scheduler.step(model_output, timestep, latents, return_dict=False, **step_options)[0]
        if after_step is not None:
            latents = after_step(latents, index)
        if on_step is not None:
            on_step(StepInfo(step=index + 1, total=len(timesteps), latents=latents))
    return latents


class LatentBlend:
    """Inpainting with an ordinary checkpoint: after each step, the unmasked area is replaced by the
    original latents noised to the next step's level, so only the masked area is really painted."""

    def __init__(self, scheduler: SchedulerMixin, timesteps: torch.Tensor, original: torch.Tensor,
                 noise: torch.Tensor, mask: torch.Tensor):
        self.scheduler = scheduler
        self.timesteps = timesteps
        self.original = original
        self.noise = noise
        self.mask = mask

    def __call__(self, latents: torch.Tensor, index: int) -> torch.Tensor:
        known = self.original
        if index + 1 < len(self.timesteps):
            known = self.scheduler.add_noise(self.original, self.noise, self.timesteps[index + 1 : index + 2])
        return (1 - self.mask) * known + self.mask * latents
