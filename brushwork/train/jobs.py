"""One typed training request for every front end: `TrainRequest` is to fine-tuning what the Recipe is to painting.

The CLI (`brushwork train lora|embedding|dreambooth`) and the server's training queue both build one and call
`fine_tune`, which picks the trainer and its painter (the Engine, for class and sample pictures); neither
front end knows how a LoRA, an embedding or a DreamBooth checkpoint is trained.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from brushwork.train.settings import PRECISIONS, StepSettings

# The names the server accepts for a file it writes into the models folder: no folders, no dot-files, nothing
# that breaks <lora:NAME:1> or an embedding's word, no trailing dot or space.
SAFE_NAME = re.compile(r"^[A-Za-z0-9<][A-Za-z0-9 _.()<>+-]{0,98}[A-Za-z0-9_)>+-]$|^[A-Za-z0-9]$")
# An embedding's token is also a file name (its sample vectors are saved under it): one word, no path.
SAFE_TOKEN = re.compile(r"^[^\s/\\\x00:,]{1,100}$")


class TrainKind(str, Enum):
    lora = "lora"
    embedding = "embedding"
    dreambooth = "dreambooth"
    controlnet = "controlnet"


# Where each kind's file belongs in an A1111 models folder (ModelStore kinds), and each kind's defaults.
MODEL_KIND = {TrainKind.lora: "lora", TrainKind.embedding: "embedding", TrainKind.dreambooth: "checkpoint",
              TrainKind.controlnet: "controlnet"}
DEFAULT_LR = {TrainKind.lora: 1e-4, TrainKind.embedding: 5e-3, TrainKind.dreambooth: 5e-6, TrainKind.controlnet: 1e-5}


class TrainRequest(BaseModel):
    """A fine-tuning run: what to train, on which pictures, for which base, and how."""

    model_config = ConfigDict(extra="forbid")

    kind: TrainKind
    output: str = Field(min_length=1, max_length=100, description="The file's name, without extension: the name "
                        "prompts use (<lora:NAME:1>, the embedding's word) or the checkpoint's.")
    base: str | None = Field(None, max_length=255, description="The checkpoint to train for (default: the server's).")
    steps: int = Field(500, ge=1, le=100_000)
    lr: float | None = Field(None, gt=0, le=1, description="Learning rate (default: the kind's).")
    resolution: int = Field(512, ge=64, le=2048, description="Buckets of about this side squared.")
    batch_size: int = Field(1, ge=1, le=64)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    checkpoint_every: int = Field(100, ge=1, le=100_000)
    sample_every: int = Field(0, ge=0, le=100_000, description="Steps between sample pictures (0: none).")
    sample_prompt: str = Field("", max_length=1000)
    mixed_precision: Literal[PRECISIONS] = "no"  # type: ignore[valid-type]
    gradient_accumulation: int = Field(1, ge=1, le=256)
    gradient_checkpointing: bool = False
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    min_snr_gamma: float = Field(0.0, ge=0.0, le=100.0, description="Min-SNR loss weighting (0: off; 5 typical).")
    train_text_encoder: bool = False
    # LoRA
    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(8.0, gt=0, le=1024)
    conv_rank: int = Field(0, ge=0, le=1024, description="LoRA: adapters on the ResNet convolutions too (LoCon).")
    conv_alpha: float = Field(1.0, gt=0, le=1024)
    caption_dropout: float = Field(0.0, ge=0.0, le=1.0)
    shuffle_tags: bool = False
    keep_tokens: int = Field(0, ge=0, le=75)
    new_words: list[str] = Field([], max_length=16, description="LoRA: words the base does not know, as WORD or "
                                 "WORD=INIT; their token vectors learn with the LoRA (pivotal tuning, starting from "
                                 "INIT's) and travel in its file as bundled embeddings.")
    word_lr: float | None = Field(None, gt=0, le=1.0, description="LoRA: the new words' learning rate (default: lr).")
    # Textual inversion
    token: str = Field("", max_length=100)
    init_word: str = Field("", max_length=100)
    vectors: int = Field(1, ge=1, le=75)
    # DreamBooth
    instance_prompt: str = Field("", max_length=1000)
    class_prompt: str = Field("", max_length=1000)
    class_images: int = Field(0, ge=0, le=10_000)
    prior_weight: float = Field(1.0, ge=0.0, le=100.0)
    class_steps: int = Field(20, ge=1, le=150)
    # ControlNet
    conditioning: str = Field("conditioning", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_ .-]*$",
                              description="ControlNet: the data folder's subfolder holding each picture's control "
                                          "picture under the same name.")
    min_aesthetic: float = Field(5.0, ge=0.0, le=10.0, description="Curation: with an aesthetic predictor in the "
                                 "models folder's aesthetic/, pictures scoring under this are left out.")

    @model_validator(mode="after")
    def _fits_its_kind(self) -> "TrainRequest":
        if self.token and (not SAFE_TOKEN.match(self.token) or ".." in self.token):
            raise ValueError(f"token {self.token!r}: one word, without / \\ : , or ..")
        for entry in self.new_words:
            word, _, init = entry.partition("=")
            if not SAFE_TOKEN.match(word) or ".." in word or "=" in init:
                raise ValueError(f"new word {entry!r} (new_words, --new-word): WORD or WORD=INIT, one word without "
                                 "/ \\ : , or ..")
        if self.new_words and self.kind is not TrainKind.lora:
            raise ValueError("new words (new_words, --new-word) train with a LoRA only")
        if self.kind is TrainKind.embedding and not (self.token.strip() and self.init_word.strip()):
            raise ValueError("an embedding needs a token, the new word (token, --token), and a word to start from "
                             "(init_word, --init-word)")
        if self.kind is TrainKind.dreambooth and not self.instance_prompt.strip():
            raise ValueError('DreamBooth needs an instance prompt (instance_prompt, --instance-prompt), '
                             'e.g. "a photo of sks dog"')
        if self.kind is TrainKind.dreambooth and self.class_images and not self.class_prompt.strip():
            raise ValueError("prior preservation (class images) needs a class prompt (class_prompt, --class-prompt)")
        return self

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.kind]

    def step_settings(self) -> StepSettings:
        return StepSettings(mixed_precision=self.mixed_precision, accumulation=self.gradient_accumulation,
                            gradient_checkpointing=self.gradient_checkpointing, ema_decay=self.ema_decay,
                            min_snr_gamma=self.min_snr_gamma)


def fine_tune(request: TrainRequest, model, store, data_dir: Path, output: Path, *, resume: bool = False,
              progress: bool = True, should_stop: Callable[[], bool] | None = None,
              on_step: Callable[[str, int, float], None] | None = None):
    """Train `request` for `model` (a LoadedModel of `store`, trained in place) on `data_dir`; the result's file
    is `output`, its state folder beside it. Returns the trainer's FineTuneResult."""
    from brushwork.train.aesthetic import AestheticScorer
    from brushwork.train.finetune import Curation, sample_file

    scorer = AestheticScorer.find(store.models_dir, allow_pickle=store.allow_pickle) if request.min_aesthetic > 0 else None
    curation = Curation(scorer, request.min_aesthetic)
    run = {"resume": resume, "progress": progress, "should_stop": should_stop, "on_step": on_step,
           "curation": curation}
    base_hash = store.hashes.sha256(model.path)
    common = {name: getattr(request, name) for name in (
        "steps", "resolution", "batch_size", "seed", "checkpoint_every", "sample_every", "sample_prompt")}
    common |= {"lr": request.learning_rate, "optimization": request.step_settings()}
    if request.kind is TrainKind.lora:
        from brushwork.train.lora import LoraTrainSettings, train_lora

        settings = LoraTrainSettings(**common, **{name: getattr(request, name) for name in (
            "rank", "alpha", "conv_rank", "conv_alpha", "caption_dropout", "train_text_encoder", "shuffle_tags",
            "keep_tokens")}, new_words=tuple(tuple(entry.partition("=")[::2]) for entry in request.new_words),
            word_lr=request.word_lr)
        paint = painter(model, store, steps=20,
                        embedding_files=[sample_file(output, word) for word, _ in settings.new_words])
        return train_lora(model.components, data_dir, output, settings, base_name=model.name, base_hash=base_hash,
                          paint=paint, **run)
    if request.kind is TrainKind.embedding:
        from brushwork.train.embedding import EmbeddingTrainSettings, train_embedding
        settings = EmbeddingTrainSettings(**common, token=request.token, init_word=request.init_word,
                                          vectors=request.vectors)
        paint = painter(model, store, steps=20, embedding_files=[sample_file(output, settings.token)])
        return train_embedding(model.components, data_dir, output, settings, base_hash=base_hash, paint=paint, **run)
    if request.kind is TrainKind.controlnet:
        from brushwork.train.controlnet import ControlNetTrainSettings, train_controlnet

        settings = ControlNetTrainSettings(**common, caption_dropout=request.caption_dropout,
                                           conditioning=request.conditioning)
        return train_controlnet(model.components, data_dir, output, settings, base_name=model.name,
                                base_hash=base_hash, paint=painter(model, store, steps=20), **run)
    from brushwork.train.dreambooth import DreamBoothSettings, train_dreambooth

    settings = DreamBoothSettings(**common, **{name: getattr(request, name) for name in (
        "instance_prompt", "class_prompt", "class_images", "prior_weight", "train_text_encoder", "class_steps")})
    # The class pictures are painted by the base model, before any step changes it.
    return train_dreambooth(model.components, painter(model, store, settings.class_steps), data_dir, output,
                            settings, base_hash=base_hash, **run)


def painter(model, store, steps: int, embedding_files: list[Path] = ()):
    """paint(prompt, seed, size, extensions=None): one picture with the model as it is now, through the Engine;
    `embedding_files` are textual inversions it knows besides the models folder's, and `extensions()` (new
    ones each call) act on the picture's denoising, e.g. a ControlNet being trained."""
    from brushwork.engine.embeddings import EmbeddingLibrary
    from brushwork.engine.engine import Engine
    from brushwork.recipe import Recipe

    current: dict[str, Callable[[], list] | None] = {"extensions": None}
    engine = Engine(store, extension_providers=[lambda *_: current["extensions"]() if current["extensions"] else []])
    if embedding_files:
        folder = engine.embeddings
        engine.embeddings = EmbeddingLibrary(lambda: [*folder.entries(), *(p for p in embedding_files if p.is_file())],
                                             allow_pickle=folder.allow_pickle)

    def paint(prompt: str, seed: int, size: int, extensions: Callable[[], list] | None = None):
        recipe = Recipe(prompt=prompt, seed=seed, steps=steps, width=size, height=size, model=str(model.path))
        current["extensions"] = extensions
        try:
            return engine.run(recipe).images[0].image
        finally:
            current["extensions"] = None

    return paint
