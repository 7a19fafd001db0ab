"""Stage 4: the denoising loop.

The loop knows only a scheduler and a `Denoiser` (`model_output = denoiser(latents, t, step)`).
Classifier-free guidance lives in `GuidedDenoiser`, a wrapper around the U-Net; ControlNet residuals
and LoRA will be further wrappers of the same shape, so the loop never grows branches for them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from diffusers import UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from brushwork.engine.conditioning import Conditioning, ScheduledConditioning
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
    """The U-Net with classifier-free guidance over a prompt schedule, for a batch of images.

    The unconditional and conditional halves run as one batch of 2×B through the U-Net; with
    `cfg_scale == 1` the unconditional half is skipped, since it would be cancelled out anyway.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        positive: ScheduledConditioning,
        negative: ScheduledConditioning,
        cfg_scale: float,
        steps: int,
        total_timesteps: int,
        time_ids: torch.Tensor | None = None,
        image_conditioning: torch.Tensor | None = None,
    ):
        self.unet = unet
        self.positive = positive
        self.negative = negative
        self.cfg_scale = cfg_scale
        self.steps = steps
        self.total_timesteps = total_timesteps
        self.time_ids = time_ids
        # Extra input channels (inpainting models: mask + masked-image latents), one row per image.
        self.image_conditioning = image_conditioning

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, step: int) -> torch.Tensor:
        batch = latents.shape[0]
        # Prompt editing counts sampling steps; second-order samplers evaluate twice per step.
        prompt_step = step * self.steps // self.total_timesteps + 1
        conditionings = [self.positive.at(prompt_step)]
        if self.guided:
            conditionings.insert(0, self.negative.at(prompt_step))
        model_input = torch.cat([latents] * len(conditionings))
        if self.image_conditioning is not None:
            extra = torch.cat([self.image_conditioning] * len(conditionings))
            model_input = torch.cat([model_input, extra.to(model_input.dtype)], dim=1)
        context = torch.cat([c.context.expand(batch, -1, -1) for c in conditionings])
        output = self.unet(
            model_input, timestep, encoder_hidden_states=context, added_cond_kwargs=self._sdxl_inputs(conditionings, batch)
        ).sample
        if not self.guided:
            return output
        uncond, cond = output.chunk(2)
        return uncond + self.cfg_scale * (cond - uncond)

    def _sdxl_inputs(self, conditionings: list[Conditioning], batch: int) -> dict | None:
        if self.time_ids is None:
            return None
        pooled = torch.cat([c.pooled.expand(batch, -1) for c in conditionings])
        time_ids = self.time_ids.expand(pooled.shape[0], -1)
        return {"text_embeds": pooled, "time_ids": time_ids}


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

    `generators` hold one seeded CPU generator per image, so ancestral/SDE noise is reproducible
    per image whatever the batch size. `after_step` may replace the latents after each step
    (inpainting with an ordinary checkpoint pastes the known area back in).
    """
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
