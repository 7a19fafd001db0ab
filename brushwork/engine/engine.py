"""Engine: Recipe in, pictures out. The only place generation happens.

    1. resolve models   ModelStore -> Components
    2. condition        prompt syntax -> scheduled, chunked CLIP contexts
    3. prepare latents  seeded noise per image
    4. denoise          scheduler + guided denoiser, progress and cancellation between steps
    5. decode           VAE, one image at a time
    (SD upscale: steps 3-5 run once per tile of the upscaled picture; see engine/sd_upscale.py)

CLI, API, UI and batch paths all call `Engine.generate`/`Engine.run`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image

from brushwork import __version__
from brushwork.engine import latents as latent_stage
from brushwork.engine import vae as vae_stage
from brushwork.engine.conditioning import PromptEncoder
from brushwork.engine.denoise import StepInfo
from brushwork.engine.embeddings import EmbeddingLibrary
from brushwork.engine.extensions import Extension, ExtensionProvider
from brushwork.engine.hires import hires_pass
from brushwork.engine.img2img import Source, prepare_source, working_size
from brushwork.engine.passes import PassPlan, run_pass, steps_run
from brushwork.engine.sd_upscale import is_no_upscaler, sd_upscale
from brushwork.engine.seamless import circular_padding
from brushwork.errors import BrushworkError, RecipeError
from brushwork.images import load_image
from brushwork.control.infotext import controlnet_extras, controlnet_model_title
from brushwork.infotext import format_infotext, recipe_extras
from brushwork.models.patches.lora import LoraCache, LoraPatch
from brushwork.models.store import LoadedModel, ModelStore
from brushwork.prompts import extract_loras
from brushwork.recipe import MAX_SEED, LoraUse, Recipe


@dataclass
class Progress:
    """Reported after every model evaluation; `preview()` is computed only when asked for.

    With SD upscale, `step` of `total` counts through all the tiles of the batch's picture (each tile's
    steps in turn), and `tile` / `tiles` say which tile pass is running.
    """

    batch: int  # 0-based index of the current batch
    batch_count: int
    step: int
    total: int
    started: float
    _latents: torch.Tensor
    _family: str
    tile: int | None = None  # SD upscale: 0-based index of the first tile in this pass
    tiles: int | None = None  # SD upscale: tiles in the picture

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
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. a resized mask)


class Engine:
    """`extension_providers` give each pass the denoiser extensions its recipes ask for (ControlNet units,
    adapters ...); each provider is asked once per recipe and pass, and its extensions act only on that
    recipe's pictures, also when the server groups several jobs into one batch."""

    def __init__(self, store: ModelStore, extension_providers: Sequence[ExtensionProvider] = ()):
        from brushwork.upscale import FaceNetworkCache, NetworkCache

        from brushwork.control.units import ControlUnits

        self.store = store
        self.controls = ControlUnits(store)  # the recipes' ControlNet and T2I-Adapter units
        self.extension_providers = [self.controls, *extension_providers]
        self.loras = LoraCache(max_loaded=16)
        self.embeddings = EmbeddingLibrary(lambda: [entry.path for entry in store.entries("embedding")],
                                           allow_pickle=store.allow_pickle)
        self._upscale_networks = NetworkCache(max_loaded=1)  # super-resolution nets: hires fix, SD upscale, extras
        self._face_networks = FaceNetworkCache(max_loaded=1)

    def resolve(self, recipe: Recipe, model: LoadedModel) -> Recipe:
        """Fill what the user left open: a random seed, the size (the init picture's, else the
        model's native one), the model's name."""
        seed = recipe.seed if recipe.seed != -1 else random.randint(0, MAX_SEED)
        size = model.components.native_size
        width, height = working_size(recipe, size) if recipe.is_img2img else (recipe.width or size, recipe.height or size)
        return recipe.model_copy(
            update={"seed": seed, "width": width, "height": height, "model": model.name, "vae": model.vae_name}
        )

    def upscale_image(self, image: Image.Image, name: str, size: float | tuple[int, int]) -> Image.Image:
        """An image upscaler by A1111 name (Lanczos, Nearest, or a network in the ESRGAN folder), by a
        factor or to a (width, height)."""
        from brushwork.upscale import upscale

        return upscale(image, name, size, self.store, cache=self._upscale_networks)

    def restore_faces(self, image: Image.Image, name: str, visibility: float = 1.0,
                      codeformer_weight: float = 0.5) -> Image.Image:
        """Faces restored by an A1111 face restorer whose weights are in GFPGAN/ or Codeformer/."""
        from brushwork.upscale import restore_faces

        return restore_faces(image, name, self.store, visibility, codeformer_weight, cache=self._face_networks)

    def postprocess(self, recipe: Recipe, picture: Image.Image) -> Image.Image:
        """The stage after decoding: face restoration, when the recipe asks for it (as A1111 runs it)."""
        if not recipe.restore_faces:
            return picture
        return self.restore_faces(picture, recipe.restore_faces, codeformer_weight=recipe.codeformer_weight)

    def extensions(self, recipe: Recipe, components, width: int, height: int,
                   images: Sequence[int] | None = None) -> list[Extension]:
        """The denoiser extensions of `recipe` for a pass at width x height, acting on its `images` of the
        batch (None: the whole batch is this recipe's). An extension that names some of the recipe's own
        pictures keeps to those (its indices are mapped to the batch's rows). Providers make new extensions
        on every call: one object in two recipes' lists would act on both."""
        made = [extension for provider in self.extension_providers
                for extension in provider(recipe, components, width, height)]
        if len({id(extension) for extension in made}) != len(made):
            raise RuntimeError("an extension provider returned the same extension twice; make a new one per call")
        if images is not None:
            rows = tuple(images)
            for extension in made:
                extension.images = rows if extension.images is None else tuple(rows[i] for i in extension.images)
        return made

    def lora_patches(self, uses: Sequence[LoraUse], components) -> list[LoraPatch]:
        """These LoRAs, read (or taken from the cache) for these components, at their multipliers."""
        patches = []
        for use in uses:
            path = self.store.resolve("lora", use.name)
            lora = self.loras.get(path, components, name=use.name, allow_pickle=self.store.allow_pickle)
            patches.append(LoraPatch(lora, *use.multipliers))
        return patches

    def _prompt_encoder(self, components, clip_skip: int, loras: Sequence[LoraPatch] = ()) -> PromptEncoder:
        """The job's prompt encoder, with the embeddings folder's textual inversions that fit the model and those
        its LoRAs bundle (a LoRA's own vectors win over a folder file of the same name: they trained together)."""
        widths = [encoder.config.hidden_size for encoder in components.text_encoders]
        embeddings = self.embeddings.for_model(widths)
        embeddings.update({embedding.name: embedding for patch in loras for embedding in patch.lora.embeddings})
        return PromptEncoder(components, clip_skip, self.store.device, self.store.dtype, embeddings=embeddings)

    def _ti_hashes(self, recipe: Recipe, encoder: PromptEncoder) -> dict[str, str]:
        """A1111's `TI hashes: "name: hash, ..."` for the textual inversions the recipe's prompts use."""
        texts = [recipe.prompt, recipe.negative_prompt]
        if recipe.hires is not None:
            texts += [recipe.hires.prompt or "", recipe.hires.negative_prompt or ""]
        used = encoder.embeddings_in(texts, recipe.steps)
        if not used:
            return {}
        return {"TI hashes": ", ".join(f"{e.name}: {self.store.hashes.sha256(e.path)[:12]}" for e in used)}

    def _lora_hashes(self, recipe: Recipe) -> dict[str, str]:
        """A1111's `Lora hashes: "name: hash, ..."`, one entry per LoRA file (in the order first used)."""
        hashes = {use.name: self.store.hashes.lora_hash(self.store.resolve("lora", use.name))
                  for use in recipe.all_loras()}
        return {"Lora hashes": ", ".join(f"{name}: {digest}" for name, digest in hashes.items())} if hashes else {}

    def _controlnet_infotext(self, recipe: Recipe) -> dict[str, str]:
        """The ControlNet extension's `ControlNet <n>: "Module: ..., Model: name [hash], ..."`, one per unit."""
        titles = [controlnet_model_title(self.store.resolve("controlnet", unit.model)) for unit in recipe.control_units]
        return controlnet_extras(recipe.control_units, titles)

    def _encode(self, components, pictures: list[Image.Image]) -> torch.Tensor:
        pixels = latent_stage.pil_to_pixels(pictures, self.store.device, self.store.dtype)
        return latent_stage.encode(components.vae, pixels)

    def _plan_img2img(self, plan: PassPlan, recipe: Recipe, source: Source, components) -> None:
        """Encode the source picture (and mask) into the first pass's starting point."""
        vae, device, dtype = components.vae, self.store.device, self.store.dtype
        plan.strength = recipe.denoising_strength
        plan.init_latents = self._encode(components, [source.image])
        if source.mask is None:
            return
        pixels = latent_stage.pil_to_pixels([source.image], device, dtype)
        latent_size = tuple(plan.init_latents.shape[-2:])
        plan.latent_mask = latent_stage.mask_to_latent(source.mask, latent_size, device, dtype)
        plan.masked_content = recipe.inpainting_fill
        if components.inpaint:
            binary = latent_stage.mask_to_latent(source.mask, tuple(pixels.shape[-2:]), device, dtype)
            plan.image_conditioning = latent_stage.inpaint_conditioning(vae, binary, pixels * (1 - binary), latent_size)

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
        batches: Sequence[int] | None = None,
        result: Result | None = None,
    ) -> Iterator[GeneratedImage]:
        """Yield each image as soon as its batch is decoded, so a cancelled run keeps finished work.

        `batches` runs just those batches (re-making one picture of a larger recipe exactly, or the batches a
        restarted job has left), its LoRAs applied once for all of them.
        """
        result = result if result is not None else Result(recipe=recipe)
        if recipe.sd_upscale is not None:
            check_sd_upscale(recipe, self.store)
        self.controls.check(recipe)
        if recipe.restore_faces:
            from brushwork.upscale import find_face_restorer

            find_face_restorer(recipe.restore_faces, self.store)  # its weights are there, before any model loads
        check_loras(recipe, self.store)
        started = time.perf_counter()
        model = self.store.load(recipe.model, vae=recipe.vae)
        recipe = self.resolve(recipe, model)
        result.recipe = recipe
        patches = self.lora_patches(recipe.all_loras(), model.components)
        result.timings["load"] = time.perf_counter() - started
        # The LoRAs change the shared model for this job only: restored when the last picture is made, when
        # the job fails, and when the caller stops early (closing this generator).
        with model.components.patcher.applied(patches):
            yield from self._generate_patched(recipe, model, patches, result, started, on_progress, should_stop,
                                              batches)
        result.timings["total"] = time.perf_counter() - started

    def _generate_patched(self, recipe: Recipe, model: LoadedModel, patches: Sequence[LoraPatch], result: Result,
                          started: float, on_progress, should_stop,
                          batches: Sequence[int] | None) -> Iterator[GeneratedImage]:
        components = model.components
        upscaling = recipe.sd_upscale is not None  # SD upscale: the init picture is split into tiles, not resized
        source = prepare_source(recipe, recipe.width, recipe.height) if recipe.is_img2img and not upscaling else None
        result.notes.extend(source.notes if source else [])
        encoder = self._prompt_encoder(components, recipe.clip_skip, patches)
        first_steps = steps_run(recipe.steps, recipe.denoising_strength) if recipe.is_img2img else recipe.steps
        positive, negative = encoder.encode_pair(recipe.prompt, recipe.negative_prompt, max(1, first_steps))
        images = recipe.batch_size
        plan = PassPlan(recipe.sampler, recipe.steps, *(source.image.size if source else (recipe.width, recipe.height)),
                        [recipe.cfg_scale] * images, [positive] * images, [negative] * images)
        if source is not None:
            self._plan_img2img(plan, recipe, source, components)
        plan.extensions = self.extensions(recipe, components, plan.width, plan.height)
        result.timings["condition"] = time.perf_counter() - started - result.timings["load"]
        result.notes.extend(lora_notes(recipe))

        init = load_image(recipe.init_image, what="init_image").convert("RGB") if upscaling else None
        batches = range(recipe.batch_count) if batches is None else batches
        for batch in batches:
            seeds = [recipe.seed + batch * recipe.batch_size + i for i in range(recipe.batch_size)]

            def report(info: StepInfo, batch: int = batch) -> None:
                if on_progress is not None:
                    on_progress(
                        Progress(batch, recipe.batch_count, info.step, info.total, started, info.latents, components.family)
                    )

            if upscaling:
                pictures = [self._sd_upscale_picture(recipe, components, init, positive, negative, seeds[0], batch,
                                                     started, on_progress, should_stop, result)]
            else:
                pictures = self._denoise(components, plan, recipe, encoder, seeds, report, should_stop, result)
            if source is not None:
                pictures = [source.finish(picture) for picture in pictures]
            pictures = [self.postprocess(recipe, picture) for picture in pictures]
            for offset, (picture, seed) in enumerate(zip(pictures, seeds)):
                yield self._generated(recipe, model, picture, seed, batch * recipe.batch_size + offset, encoder)

    def _denoise(self, components, plan: PassPlan, recipe: Recipe, encoder: PromptEncoder | None, seeds: list[int],
                 report: Callable[[StepInfo], None], should_stop, result: Result) -> list[Image.Image]:
        """Steps 3-5 for one batch: the pass (and hires fix's second pass), then the VAE decode."""
        generators = latent_stage.image_generators(seeds)
        step_started = time.perf_counter()
        with torch.inference_mode(), circular_padding(components.unet, components.vae, enabled=recipe.tiling):
            latents = run_pass(components, plan, generators, seeds, on_step=report, should_stop=should_stop,
                               noise_seed_delta=recipe.eta_noise_seed_delta)
            if recipe.hires is not None:
                latents = hires_pass(components, encoder, recipe, latents, generators, seeds,
                                     self.upscale_image, on_step=report, should_stop=should_stop,
                                     extensions=lambda width, height: self.extensions(recipe, components, width, height))
            result.timings["denoise"] = result.timings.get("denoise", 0.0) + time.perf_counter() - step_started
            decode_started = time.perf_counter()
            pictures = vae_stage.decode(components.vae, latents)
            result.timings["decode"] = result.timings.get("decode", 0.0) + time.perf_counter() - decode_started
        return pictures

    def _sd_upscale_picture(self, recipe: Recipe, components, init: Image.Image, positive, negative, seed: int,
                            batch: int, started: float, on_progress, should_stop, result: Result) -> Image.Image:
        """One picture of an SD upscale recipe: each tile is an ordinary img2img batch through `_denoise`."""

        def run_tiles(tiles: list[Image.Image], seeds: list[int], done: int, count: int) -> list[Image.Image]:
            images = len(tiles)
            plan = PassPlan(recipe.sampler, recipe.steps, recipe.width, recipe.height, [recipe.cfg_scale] * images,
                            [positive] * images, [negative] * images, strength=recipe.denoising_strength,
                            init_latents=self._encode(components, tiles),
                            extensions=self.extensions(recipe, components, recipe.width, recipe.height))

            def report(info: StepInfo) -> None:  # steps counted through all the picture's tiles
                if on_progress is not None:
                    on_progress(Progress(batch, recipe.batch_count, done * info.total + images * info.step,
                                         count * info.total, started, info.latents, components.family,
                                         tile=done, tiles=count))

            return self._denoise(components, plan, recipe, None, seeds, report, should_stop, result)

        return sd_upscale(init, recipe.sd_upscale, (recipe.width, recipe.height), seed, self.upscale_image, run_tiles)

    def generate_group(
        self,
        recipes: list[Recipe],
        *,
        on_progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Result]:
        """Several compatible txt2img recipes (see `groupable`) denoised as one U-Net batch.

        Each image keeps its own prompt, negative prompt, CFG scale and seed. Prompts are padded
        to a common chunk count only among equals: recipes whose prompts need different counts run
        in separate batches, so grouping never changes what a picture looks like.
        """
        if not recipes:
            return []
        key = groupable(recipes[0])
        if key is None or any(groupable(r) != key for r in recipes):
            raise ValueError("generate_group takes txt2img recipes with the same model, size, sampler and steps")
        check_loras(recipes[0], self.store)
        for recipe in recipes:
            self.controls.check(recipe)
        started = time.perf_counter()
        model = self.store.load(recipes[0].model, vae=recipes[0].vae)
        resolved = [self.resolve(recipe, model) for recipe in recipes]
        patches = self.lora_patches(resolved[0].all_loras(), model.components)  # groupable: the same LoRAs
        encoder = self._prompt_encoder(model.components, resolved[0].clip_skip, patches)
        results = [Result(recipe=recipe) for recipe in resolved]
        subgroups: dict[int, list[int]] = {}
        for index, recipe in enumerate(resolved):
            subgroups.setdefault(encoder.chunk_count(recipe.prompt, recipe.negative_prompt, recipe.steps), []).append(index)
        with model.components.patcher.applied(patches):
            for members in subgroups.values():
                self._run_group([resolved[i] for i in members], [results[i] for i in members], model, encoder,
                                started, on_progress, should_stop)
        for recipe, result in zip(resolved, results):
            result.notes.extend(lora_notes(recipe))
        for result in results:
            result.timings["total"] = time.perf_counter() - started
        return results

    def _run_group(self, recipes, results, model, encoder, started, on_progress, should_stop) -> None:
        components = model.components
        first = recipes[0]
        pairs = encoder.encode_many([(r.prompt, r.negative_prompt) for r in recipes], first.steps)
        seeds, owners, positives, negatives, scales, extensions = [], [], [], [], [], []
        for number, (recipe, (positive, negative)) in enumerate(zip(recipes, pairs)):
            rows = range(len(seeds), len(seeds) + recipe.batch_size)
            extensions += self.extensions(recipe, components, recipe.width, recipe.height, images=rows)
            for offset in range(recipe.batch_size):
                seeds.append(recipe.seed + offset)
                owners.append((number, offset))
                positives.append(positive)
                negatives.append(negative)
                scales.append(recipe.cfg_scale)
        plan = PassPlan(first.sampler, first.steps, first.width, first.height, scales, positives, negatives,
                        extensions=extensions)

        def report(info: StepInfo) -> None:
            if on_progress is not None:
                on_progress(Progress(0, 1, info.step, info.total, started, info.latents, components.family))

        with torch.inference_mode(), circular_padding(components.unet, components.vae, enabled=first.tiling):
            latents = run_pass(components, plan, latent_stage.image_generators(seeds), seeds,
                               on_step=report, should_stop=should_stop, noise_seed_delta=first.eta_noise_seed_delta)
            pictures = vae_stage.decode(components.vae, latents)
        pictures = [self.postprocess(first, picture) for picture in pictures]
        for picture, seed, (number, offset) in zip(pictures, seeds, owners):
            results[number].images.append(self._generated(recipes[number], model, picture, seed, offset, encoder))

    def _generated(self, recipe: Recipe, model: LoadedModel, picture: Image.Image, seed: int, index: int,
                   encoder: PromptEncoder) -> GeneratedImage:
        return GeneratedImage(
            image=picture,
            seed=seed,
            index=index,
            infotext=format_infotext(
                with_lora_tags(recipe), seed=seed, width=recipe.width, height=recipe.height,
                model_name=model.name, model_hash=model.short_hash,
                vae_name=model.vae_name, vae_hash=model.vae_short_hash,
                extra=(recipe_extras(recipe) | self._ti_hashes(recipe, encoder) | self._lora_hashes(recipe)
                       | self._controlnet_infotext(recipe)),
            ),
            recipe_json=json.dumps({"brushwork": __version__, "recipe": recipe.model_dump(), "index": index}, sort_keys=True),
        )


def with_lora_tags(recipe: Recipe) -> Recipe:
    """The recipe as its infotext tells it: `loras` become `<lora:...>` tags at the prompt's end, so A1111 (and
    brushwork's infotext parser) apply them when the picture's parameters are read back."""
    if not recipe.loras:
        return recipe
    tags = []
    for use in recipe.loras:
        te, unet = use.multipliers
        tags.append(f"<lora:{use.name}:{te:g}>" if te == unet else f"<lora:{use.name}:{te:g}:{unet:g}>")
    return recipe.model_copy(update={"prompt": " ".join([recipe.prompt, *tags]).strip(), "loras": []})


def check_sd_upscale(recipe: Recipe, store: ModelStore) -> None:
    """What an SD upscale recipe needs before any model loads: its picture, and an upscaler that exists."""
    from brushwork.upscale import find_upscaler

    if not recipe.is_img2img:
        raise RecipeError("sd_upscale: needs an init_image to upscale (SD upscale is an img2img script)")
    if not is_no_upscaler(recipe.sd_upscale.upscaler):
        try:
            find_upscaler(recipe.sd_upscale.upscaler, store)
        except BrushworkError as error:
            raise RecipeError(f"sd_upscale.upscaler: {error} (or None: no upscale)") from None


def check_loras(recipe: Recipe, store: ModelStore) -> None:
    """Every LoRA the recipe names is in the models folder, before any model loads."""
    for use in recipe.all_loras():
        store.resolve("lora", use.name)  # a ModelLoadError says where it looked and what there is


def lora_notes(recipe: Recipe) -> list[str]:
    """A warning for each `<lora:...>` tag removed unapplied: those of the negative and hires prompts (the
    prompt's own tags apply to the whole run, hires pass included)."""
    applied = {use.name for use in recipe.all_loras()}
    texts = [recipe.negative_prompt]
    if recipe.hires is not None:
        texts += [recipe.hires.prompt or "", recipe.hires.negative_prompt or ""]
    tags = [f"<lora:{ref.name}:{ref.weight:g}>" for text in texts for ref in extract_loras(text)[1]
            if ref.name not in applied]
    return [f"{tag} was removed from the prompt and not applied: LoRAs apply from the prompt (or `loras`) "
            "for the whole run" for tag in dict.fromkeys(tags)]


def groupable(recipe: Recipe) -> tuple | None:
    """What recipes must share to run as one U-Net batch; None for recipes that never group
    (img2img and hires fix carry per-job pictures and passes)."""
    if recipe.is_img2img or recipe.hires is not None or recipe.sd_upscale is not None or recipe.batch_count != 1:
        return None
    # The LoRAs patch the model for the whole batch, so only jobs with the same ones (and weights) share it.
    loras = tuple((use.name, use.multipliers) for use in recipe.all_loras())
    return (recipe.model, recipe.vae, recipe.width, recipe.height, recipe.sampler, recipe.steps, recipe.clip_skip,
            recipe.tiling, recipe.eta_noise_seed_delta, recipe.restore_faces, recipe.codeformer_weight, loras)
