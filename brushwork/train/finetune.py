"""What every fine-tuning run shares (LoRA, textual inversion, DreamBooth): its state folder, the curated
pictures encoded once into aspect-ratio buckets, a batch order fixed by the seed, and the diffusion objective."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from brushwork.engine.embeddings import EmbeddingMatcher, vectors_hook
from brushwork.errors import BrushworkError
from brushwork.models.components import Components
from brushwork.prompts import build_chunks
from brushwork.train.aesthetic import AestheticScorer
from brushwork.train.curation import CurationSettings, curate
from brushwork.train.dataset import Example, fit_to_bucket, make_buckets, nearest_bucket, scan_folder
from brushwork.train.loop import LoopHooks, LoopResult, learning_rate, run_steps
from brushwork.train.optimize import Optimization, processes
from brushwork.train.state import TrainingState, state_dir_for


@dataclass(frozen=True)
class Curation:
    """What a fine-tuning run's curation may use besides its fixed tests: the aesthetic predictor, if found."""

    aesthetic: AestheticScorer | None = None
    min_aesthetic: float = 5.0


@dataclass
class Picture:
    latents: torch.Tensor  # [4, h, w], scaled
    caption: str
    bucket: tuple[int, int]


@dataclass
class FineTuneResult:
    """What a fine-tuning run made: its file, its steps and their losses, its time in the step loop (this
    session's), and how many pictures it trained on."""

    output: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    pictures: int = 0


def run_state(output: Path, run: dict[str, Any], resume: bool) -> TrainingState:
    """The state folder beside `output`; `resume` needs one made by the same run (settings, base, data)."""
    state = TrainingState(state_dir_for(output))
    run = json.loads(json.dumps(run))  # as it reads back: tuples become lists
    if resume:
        if not state.exists():
            raise BrushworkError(f"nothing to resume: no training state in {state.folder}")
        if state.read_run() != run:
            raise BrushworkError(f"--resume: {state.folder} was made with other settings, base or data")
    launched = processes()
    if launched.is_main_process:  # several launched processes share one state folder
        state.write_run(run)
    launched.wait_for_everyone()
    return state


def curated_examples(data_dir: Path, output: Path, resolution: int, command: str, default_caption: str = "",
                     curation: Curation | None = None, exclude: Path | None = None) -> list[Example]:
    """The pictures curation keeps (none below `exclude`); its report is saved beside the output
    (`NAME.curation.json`)."""
    curation = curation or Curation()
    examples = scan_folder(data_dir, default_caption=default_caption, exclude=exclude)
    report = curate(examples, Path(data_dir).expanduser(),
                    CurationSettings(resolution=resolution, min_aesthetic=curation.min_aesthetic), curation.aesthetic)
    output.parent.mkdir(parents=True, exist_ok=True)
    report_path = output.with_suffix(".curation.json")
    if processes().is_main_process:
        report_path.write_text(report.to_json(), encoding="utf-8")
    by_name = {example.path.relative_to(Path(data_dir).expanduser()).as_posix(): example for example in examples}
    if not report.kept:
        raise BrushworkError(f"{command}: curation left no picture of {data_dir} (see {report_path})")
    return [by_name[name] for name in report.kept]


def encode_pictures(components: Components, examples, resolution: int) -> list[Picture]:
    """Each picture fitted to its bucket and encoded once (the posterior's mean: no randomness to replay)."""
    buckets = make_buckets(resolution)
    vae = components.vae
    pictures = []
    with torch.no_grad():
        for example in examples:
            with Image.open(example.path) as opened:
                image = opened.convert("RGB")
            bucket = nearest_bucket(image.size, buckets)
            pixels = torch.from_numpy(np.asarray(fit_to_bucket(image, bucket), dtype=np.float32) / 127.5 - 1)
            pixels = pixels.permute(2, 0, 1)[None].to(vae.device, vae.dtype)
            latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
            for _ in range(example.repeats):
                pictures.append(Picture(latents[0].float().cpu(), example.caption, bucket))
    return pictures


def batch_order(pictures: list[Picture], batch_size: int, seed: int) -> Callable[[int], list[int]]:
    """Step -> the indices of its batch: per epoch (seeded by seed and epoch) the pictures of each bucket are
    shuffled and cut into batches, and the batches shuffled; a step's batch depends only on its number."""
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, picture in enumerate(pictures):
        by_bucket.setdefault(picture.bucket, []).append(index)
    epochs: dict[int, list[list[int]]] = {}

    def epoch_batches(epoch: int) -> list[list[int]]:
        if epoch not in epochs:
            chance = random.Random(seed * 7919 + epoch)
            batches = []
            for bucket in sorted(by_bucket):
                members = list(by_bucket[bucket])
                chance.shuffle(members)
                batches += [members[i: i + batch_size] for i in range(0, len(members), batch_size)]
            chance.shuffle(batches)
            epochs.clear()
            epochs[epoch] = batches
        return epochs[epoch]

    per_epoch = len(epoch_batches(0))

    def batch(step: int) -> list[int]:
        return epoch_batches(step // per_epoch)[step % per_epoch]

    return batch


@dataclass(frozen=True)
class RunControls:
    """How a caller follows and steers a fine-tuning run: a progress bar, a stop request asked after every step
    (True saves a checkpoint and stops), and a callback per step with (stage, steps done, loss)."""

    progress: bool = True
    should_stop: Callable[[], bool] | None = None
    on_step: Callable[[str, int, float], None] | None = None


def run_fine_tune(stage: str, start: int, settings, optimization: Optimization, loss_of: Callable[[int], torch.Tensor],
                  checkpoint: Callable[[int], None], trained: list[torch.nn.Module], controls: RunControls, *,
                  samples: Path, paint: Callable[[str, int, int], Image.Image] | None = None, sample_prompt: str = "",
                  before_sample: Callable[[], None] | None = None, warmup: int = 0) -> LoopResult:
    """The step loop every fine-tuner runs, from step `start` to `settings.steps`: each step one optimizer step
    over `loss_of`'s micro-batches at the cosine schedule's rate, a checkpoint every `settings.checkpoint_every`
    steps, and with `paint` a sample picture of `sample_prompt` every `settings.sample_every` steps into
    `samples`. The `trained` modules are in train mode for the steps and frozen in eval mode after, even when
    the run fails or is stopped."""

    def step(index: int) -> float:
        return optimization.step(index, learning_rate(index, settings.steps, settings.lr, warmup, 1.0), loss_of)

    sample = None
    if paint is not None and settings.sample_every and optimization.is_main:  # the painter holds these modules
        sample = sample_hook(samples, paint, sample_prompt, settings.seed, settings.resolution, trained, before_sample)
    for module in trained:
        module.train()
    try:
        return run_steps(stage, start, settings.steps, step, LoopHooks(
            checkpoint=checkpoint, checkpoint_every=settings.checkpoint_every,
            should_stop=optimization.stop_together(controls.should_stop), on_step=controls.on_step,
            progress=controls.progress, sample=sample, sample_every=settings.sample_every))
    finally:
        for module in trained:
            module.eval()
            module.requires_grad_(False)


def sample_file(output: Path, word: str) -> Path:
    """Where a run that learns a word's vectors saves them before each sample picture: in the state folder,
    named after the word, so the painter's Engine (told of these files) finds the word in the sample prompt."""
    return state_dir_for(output) / "embedding" / f"{word}.safetensors"


def sample_hook(folder: Path, paint: Callable[[str, int, int], Image.Image], prompt: str, seed: int, size: int,
                modules: list[torch.nn.Module], before: Callable[[], None] | None = None) -> Callable[[int], None]:
    """A LoopHooks.sample: paint `prompt` with the weights as they are after a step (`before` first brings
    anything the painter reads from disk up to date) into `folder`/step-NNNNNN.png, modules in eval mode."""

    def sample(done: int) -> None:
        if before is not None:
            before()
        training = [module.training for module in modules]
        for module in modules:
            module.eval()
        try:
            picture = paint(prompt, seed, size)
        finally:
            for module, was in zip(modules, training):
                module.train(was)
        folder.mkdir(parents=True, exist_ok=True)
        picture.save(folder / f"step-{done:06d}.png")

    return sample


def batch_captions(pictures: list[Picture], batch: list[int], generator: torch.Generator, dropout: float) -> list[str]:
    """The batch's captions, each left out (an empty caption) with probability `dropout`, drawn from `generator`
    first of a step's draws: the dropped steps train the unconditional prediction CFG subtracts."""
    return [pictures[i].caption if torch.rand((), generator=generator) >= dropout else "" for i in batch]


def shuffled_tags(caption: str, keep: int, generator: torch.Generator) -> str:
    """kohya's shuffle_caption with keep_tokens: the comma-separated tags after the first `keep` in a random
    order drawn from `generator` (so each step's order is fixed by its seed)."""
    tags = [tag.strip() for tag in caption.split(",") if tag.strip()]
    kept, rest = tags[:keep], tags[keep:]
    order = torch.randperm(len(rest), generator=generator).tolist() if rest else []
    return ", ".join(kept + [rest[i] for i in order])


@dataclass
class TextConditioning:
    """What the U-Net reads of a batch's captions: the context, and SDXL's pooled text and size ids."""

    context: torch.Tensor
    added: dict[str, torch.Tensor] | None = None


@dataclass
class NewWord:
    """A word the base model does not know whose token vectors learn: with a LoRA (pivotal tuning) or alone
    (textual inversion). For each text encoder, the vectors that stand in for the word, as its embedding will."""

    word: str
    vectors: list[torch.Tensor]  # [count, width] per text encoder

    @classmethod
    def start(cls, components: Components, word: str, init: str, count: int = 0) -> "NewWord":
        """`count` vectors per text encoder (0: one per token of `word`), starting as `init`'s token embeddings
        in that encoder (their mean, repeated, when `init` has another number of tokens), or as the word's own."""
        vectors = []
        for tokenizer, encoder in zip(components.tokenizers, components.text_encoders):
            word_ids = tokenizer(word, add_special_tokens=False).input_ids
            init_ids = tokenizer(init, add_special_tokens=False).input_ids if init else word_ids
            if not word_ids:
                raise BrushworkError(f"the new word {word!r} has no tokens")
            if not init_ids:
                raise BrushworkError(f"the word {init!r} to start {word!r} from has no tokens")
            places = count or len(word_ids)
            table = encoder.get_input_embeddings().weight
            with torch.no_grad():
                rows = table[torch.tensor(init_ids, device=table.device)].float()
                start = rows if len(init_ids) == places else rows.mean(0, keepdim=True).repeat(places, 1)
            vectors.append(start.clone().requires_grad_(True))
        return cls(word, vectors)


def _placed_words(tokenizer, captions: list[str], words: list[NewWord],
                  index: int) -> tuple[list[list[int]], dict[int, list[tuple[int, torch.Tensor]]]]:
    """The captions' token ids as the Engine chunks a prompt (the first chunk, as trainers use), and where each
    new word's vectors (of text encoder `index`) go: a word takes as many places as it has vectors, found by the
    Engine's own matcher, so training places them exactly where a prompt will."""
    by_word = {word.word: word for word in words}
    counts = {name: SimpleNamespace(count=word.vectors[index].shape[0]) for name, word in by_word.items()}

    def tokenize(pieces: list[str]) -> list[list[int]]:
        return tokenizer(pieces, add_special_tokens=False, truncation=False).input_ids

    matcher = EmbeddingMatcher(counts, tokenize)
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks = [build_chunks(caption, tokenize, bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id,
                           pad_id=tokenizer.pad_token_id, comma_id=None if comma == tokenizer.unk_token_id else comma,
                           find_embedding=matcher)[0] for caption in captions]
    rows = {row: [(position, by_word[name].vectors[index]) for position, name in chunk.fixes]
            for row, chunk in enumerate(chunks) if chunk.fixes}
    return [chunk.tokens for chunk in chunks], rows


def encode_captions(components: Components, captions: list[str], sizes: list[tuple[int, int]],
                    words: list[NewWord] = ()) -> TextConditioning:
    """The captions as the Engine conditions on a prompt of one chunk: every text encoder's hidden states (the
    family's layer) side by side; on SDXL also the second encoder's pooled embedding and the size ids, which
    say each picture was its bucket's size, uncropped (`sizes` are (width, height)). With `words`, the captions
    are chunked as the Engine chunks a prompt and each word's vectors put where it is (`_placed_words`)."""
    family = components.model_family
    contexts, pooled = [], None
    for index, (tokenizer, encoder) in enumerate(zip(components.tokenizers, components.text_encoders)):
        # A word may take more or fewer places than its tokens (textual inversion's vectors), as in a prompt;
        # captions without new words are read as kohya's trainers read them.
        if words:
            ids, rows = _placed_words(tokenizer, captions, list(words), index)
        else:
            ids, rows = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                                  truncation=True).input_ids, {}
        ids = torch.tensor(ids, device=encoder.device)
        handle = encoder.get_input_embeddings().register_forward_hook(vectors_hook(rows)) if rows else None
        try:
            output = encoder(ids, output_hidden_states=family.penultimate_layer)
        finally:
            if handle is not None:
                handle.remove()
        contexts.append(output.hidden_states[-2] if family.penultimate_layer else output[0])
        if hasattr(output, "text_embeds"):
            pooled = output.text_embeds
    context = torch.cat(contexts, dim=-1)
    if not family.size_conditioning:
        return TextConditioning(context)
    time_ids = torch.tensor([[h, w, 0, 0, h, w] for w, h in sizes], dtype=torch.float32, device=context.device)
    return TextConditioning(context, {"text_embeds": pooled, "time_ids": time_ids})


class Objective:
    """The diffusion loss every fine-tuner trains: noise the latents at uniform timesteps of the model's own
    schedule and regress what the model predicts (the noise, or v). With `snr_gamma` > 0 each picture's loss
    is Min-SNR weighted (Hang et al. 2023, as diffusers' and kohya's trainers do): nearly clean timesteps,
    whose targets are mostly fine texture, stop outweighing the noisy ones where shapes and layout are decided."""

    def __init__(self, components: Components, snr_gamma: float = 0.0):
        from diffusers import DDPMScheduler

        self.components = components
        self.scheduler = DDPMScheduler.from_config(components.scheduler_config)
        self.snr_gamma = snr_gamma

    def noisy(self, pictures: list[Picture], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, timesteps, target) for one batch, every draw from `generator`."""
        device = self.components.unet.device
        latents = torch.stack([picture.latents for picture in pictures]).to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(pictures),),
                                  generator=generator).to(device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        target = noise if self.components.prediction_type == "epsilon" else \
            self.scheduler.get_velocity(latents, noise, timesteps)
        return noisy, timesteps, target

    def loss(self, unet, noisy: torch.Tensor, timesteps: torch.Tensor, target: torch.Tensor,
             context: torch.Tensor | TextConditioning, **unet_inputs) -> torch.Tensor:
        """The batch's loss; `unet_inputs` go to the U-Net too (a ControlNet's residuals)."""
        extra = dict(unet_inputs)
        if isinstance(context, TextConditioning):
            if context.added is not None:
                extra["added_cond_kwargs"] = {k: v.to(unet.dtype) for k, v in context.added.items()}
            context = context.context
        prediction = unet(noisy.to(unet.dtype), timesteps, encoder_hidden_states=context.to(unet.dtype),
                          **extra).sample
        error = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.snr_gamma <= 0:
            return error.mean()
        alphas = self.scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        snr = alphas / (1 - alphas)
        weights = snr.clamp(max=self.snr_gamma) / (snr if self.components.prediction_type == "epsilon" else snr + 1)
        return (error * weights).mean()
