"""A1111 sampler names mapped onto diffusers schedulers.

Each job builds its own scheduler instance from the model's base scheduler config, so no step state is
ever shared between jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class SamplerSpec:
    scheduler: type[SchedulerMixin]
    options: dict[str, Any] = field(default_factory=dict)


_KARRAS = {"use_karras_sigmas": True}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
_DPMPP_3M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}

SAMPLERS: dict[str, SamplerSpec] = {
    "Euler": SamplerSpec(EulerDiscreteScheduler),
    "Euler a": SamplerSpec(EulerAncestralDiscreteScheduler),
    "Heun": SamplerSpec(HeunDiscreteScheduler),
    "LMS": SamplerSpec(LMSDiscreteScheduler),
    "LMS Karras": SamplerSpec(LMSDiscreteScheduler, _KARRAS),
    "DPM2": SamplerSpec(KDPM2DiscreteScheduler),
    "DPM2 Karras": SamplerSpec(KDPM2DiscreteScheduler, _KARRAS),
    "DPM2 a": SamplerSpec(KDPM2AncestralDiscreteScheduler),
    "DPM2 a Karras": SamplerSpec(KDPM2AncestralDiscreteScheduler, _KARRAS),
    "DPM++ 2M": SamplerSpec(DPMSolverMultistepScheduler, _DPMPP_2M),
    "DPM++ 2M Karras": SamplerSpec(DPMSolverMultistepScheduler, _DPMPP_2M | _KARRAS),
    "DPM++ SDE": SamplerSpec(DPMSolverSDEScheduler),
    "DPM++ SDE Karras": SamplerSpec(DPMSolverSDEScheduler, _KARRAS),
    "DPM++ 2M SDE": SamplerSpec(DPMSolverMultistepScheduler, _DPMPP_2M_SDE),
    "DPM++ 2M SDE Karras": SamplerSpec(DPMSolverMultistepScheduler, _DPMPP_2M_SDE | _KARRAS),
    "DPM++ 3M SDE": SamplerSpec(DPMSolverMultistepScheduler, _DPMPP_3M_SDE),
    "DPM++ 3M SDE Karras": SamplerSpec(DPMSolverMultistepScheduler, _DPMPP_3M_SDE | _KARRAS),
    "DDIM": SamplerSpec(DDIMScheduler),
    "PLMS": SamplerSpec(PNDMScheduler, {"skip_prk_steps": True}),
    "UniPC": SamplerSpec(UniPCMultistepScheduler),
    "LCM": SamplerSpec(LCMScheduler),
}


def make_scheduler(name: str, base_config: dict[str, Any], seeds: Sequence[int]) -> SchedulerMixin:
    """A fresh scheduler for one batch: the model's noise schedule with the sampler's algorithm.

    `seeds` (one per picture) matter only to DPM++ SDE, whose noise comes from Brownian trees
    rather than from the per-picture generators: it gets one tree per picture, seeded with that
    picture's seed (as A1111 and k-diffusion do), so picture k of a batch equals its seed alone.
    Every other stochastic sampler draws its noise in `step()` from the generators it is given.
    """
    spec = SAMPLERS[name]
    options = dict(spec.options)
    if spec.scheduler is DPMSolverSDEScheduler:
        options["noise_sampler_seed"] = [int(seed) for seed in seeds]
    return spec.scheduler.from_config(base_config, **options)
