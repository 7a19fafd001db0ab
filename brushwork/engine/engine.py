"""Engine: Recipe in, pictures out. The only place generation happens.

    1. resolve models   ModelStore -> Components
    2. condition        prompt syntax -> scheduled, chunked CLIP contexts
    3. prepare latents  seeded noise per image
    4. denoise          scheduler + guided denoiser, progress and cancellation between steps
    5. decode           VAE, one image at a time

CLI, API, UI and batch paths all call `Engine.generate`/`Engine.run`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from PIL import Image

from brushwork import __version__
from brushwork.engine import latents as latent_stage
from brushwork.engine import vae as vae_stage
from brushwork.engine.conditioning import PromptEncoder
from brushwork.engine.denoise import GuidedDenoiser, StepInfo, sample
from brushwork.engine.samplers import make_scheduler
from brushwork.infotext import format_infotext
from brushwork.models.store import LoadedModel, ModelStore
from brushwork.recipe import MAX_SEED, Recipe


@dataclass
class Progress:
    """Reported after every model evaluation; `preview()` is computed only when asked for."""

    batch: int  # 0-based index of the current batch
    batch_count: int
    step: int
    total: int
    started: float
    _latents: torch.Tensor
    _family: str

    @property
    def fraction(self) -> float:
        return (self.batch + self.step / self.total) / self.batch_count

    @property
    def eta_seconds(self) -> float | None:
        done = self.fraction
        return None if done <= 0 else (time.perf_counter() - self.started) * (1 - done) / done

    def preview(self) -> Image.Image:
        return vae_stage.preview(self._latents, self._family)


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    index: int  # position among all images of the recipe
    infotext: str
    recipe_json: str  # the resolved recipe and this image's index: enough to make it again exactly


@dataclass
class Result:
    recipe: Recipe  # resolved: concrete seed, size and model
    images: list[GeneratedImage] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class Engine:
    def __init__(self, store: ModelStore):
        self.store = store

    def resolve(self, recipe: Recipe, model: LoadedModel) -> Recipe:
        """Fill what the user left open: a random seed, the model's native size, the model's name."""
        seed = recipe.seed if recipe.seed != -1 else random.randint(0, MAX_SEED)
        size = model.components.native_size
        return recipe.model_copy(
            update={
                "seed": seed,
                "width": recipe.width or size,
                "height": recipe.height or size,
                "model": model.name,
                "vae": model.vae_name,
            }
        )

    def run(self, recipe: Recipe, **options) -> Result:
        """Generate every image of the recipe and return them together."""
        result = Result(recipe=recipe)
        for image in self.generate(recipe, result=result, **options):
            result.images.append(image)
        return result

    def generate(
        self,
        recipe: Recipe,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        only_batch: int | None = None,
        result: Result | None = None,
    ) -> Iterator[GeneratedImage]:
        """Yield each image as soon as its batch is decoded, so a cancelled run keeps finished work.

        `only_batch` runs just that batch (re-making one picture of a larger recipe exactly).
        """
        result = result if result is not None else Result(recipe=recipe)
        started = time.perf_counter()
        model = self.store.load(recipe.model, vae=recipe.vae)
        recipe = self.resolve(recipe, model)
        result.recipe = recipe
        result.timings["load"] = time.perf_counter() - started
        components = model.components
        device, dtype = self.store.device, self.store.dtype

        encoder = PromptEncoder(components, recipe.clip_skip, device, dtype)
        positive, negative = encoder.encode_pair(recipe.prompt, recipe.negative_prompt, recipe.steps)
        result.timings["condition"] = time.perf_counter() - started - result.timings["load"]

        batches = range(recipe.batch_count) if only_batch is None else [only_batch]
        for batch in batches:
            seeds = [recipe.seed + batch * recipe.batch_size + i for i in range(recipe.batch_size)]
            generators = latent_stage.image_generators(seeds)
            scheduler = make_scheduler(recipe.sampler, components.scheduler_config, seed=seeds[0])
            scheduler.set_timesteps(recipe.steps, device=device)
            shape = latent_stage.latent_shape(components.vae, recipe.height, recipe.width)
            noise = latent_stage.initial_noise(generators, shape, device, dtype)
            latents = noise * scheduler.init_noise_sigma
            denoiser = GuidedDenoiser(
                components.unet, positive, negative, recipe.cfg_scale, recipe.steps, len(scheduler.timesteps),
                time_ids=_sdxl_time_ids(components, recipe, device, dtype),
                image_conditioning=(
                    latent_stage.txt2img_inpaint_conditioning(components.vae, len(seeds), recipe.height, recipe.width)
                    if components.inpaint else None
                ),
            )

            def report(info: StepInfo, batch: int = batch) -> None:
                if on_progress is not None:
                    on_progress(
                        Progress(batch, recipe.batch_count, info.step, info.total, started, info.latents, components.family)
                    )

            step_started = time.perf_counter()
            with torch.inference_mode():
                latents = sample(denoiser, scheduler, latents, generators, on_step=report, should_stop=should_stop)
                result.timings["denoise"] = result.timings.get("denoise", 0.0) + time.perf_counter() - step_started
                decode_started = time.perf_counter()
                pictures = vae_stage.decode(components.vae, latents)
                result.timings["decode"] = result.timings.get("decode", 0.0) + time.perf_counter() - decode_started
            for offset, (picture, seed) in enumerate(zip(pictures, seeds)):
                index = batch * recipe.batch_size + offset
                yield GeneratedImage(
                    image=picture,
                    seed=seed,
                    index=index,
                    infotext=format_infotext(
                        recipe, seed=seed, width=recipe.width, height=recipe.height,
                        model_name=model.name, model_hash=model.short_hash,
                        vae_name=model.vae_name, vae_hash=model.vae_short_hash,
                    ),
                    recipe_json=json.dumps(
                        {"brushwork": __version__, "recipe": recipe.model_dump(), "index": index}, sort_keys=True
                    ),
                )
        result.timings["total"] = time.perf_counter() - started


def _sdxl_time_ids(components, recipe: Recipe, device, dtype) -> torch.Tensor | None:
    """SDXL's size conditioning: original size, crop top-left (0, 0), target size."""
    if components.family != "sdxl":
        return None
    size = (recipe.height, recipe.width)
    return torch.tensor([[*size, 0, 0, *size]], device=device, dtype=dtype)
