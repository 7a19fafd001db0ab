"""`brushwork train embedding`: textual inversion, a few new token vectors for an SD 1.x, 2.x or SDXL checkpoint.

Only the vectors learn; the model stays as it is. Each text encoder (SDXL's CLIP-L and OpenCLIP-G both) gets
vectors of its own, which start as `init_word`'s token embeddings in it and are placed in each caption where
the token is, exactly as the engine places a finished embedding (engine/embeddings.py: a hook on the
token-embedding layer, the vectors never split between chunks), so what trains is what will be used. This is
the LoRA trainer's pivotal tuning (finetune.py's NewWord and encode_captions) without the adapters. A caption
without the token gets it in front. The output is the `.safetensors` layout A1111 and ComfyUI share (`emb_params`
[vectors, width]; on SDXL `clip_l` and `clip_g`, which diffusers' `load_textual_inversion` takes one encoder at
a time); its file name is the word that calls it in a prompt.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from brushwork.engine.embeddings import embedding_state
from brushwork.errors import BrushworkError
from brushwork.models.components import Components
from brushwork.train.finetune import (
    Curation,
    FineTuneResult,
    NewWord,
    Objective,
    RunControls,
    batch_order,
    curated_examples,
    encode_captions,
    encode_pictures,
    run_fine_tune,
    run_state,
    sample_file,
)
from brushwork.train.optimize import Optimization
from brushwork.train.settings import StepSettings


@dataclass(frozen=True)
class EmbeddingTrainSettings:
    token: str
    init_word: str
    vectors: int = 1
    steps: int = 500
    lr: float = 5e-3
    resolution: int = 512
    batch_size: int = 1
    seed: int = 0
    checkpoint_every: int = 100
    sample_every: int = 0  # steps between sample pictures (0: none), painted through the Engine
    sample_prompt: str = ""  # default: the first picture's caption (with the token)
    optimization: StepSettings = StepSettings()


def train_embedding(components: Components, data_dir: Path, output: Path, settings: EmbeddingTrainSettings, *,
                    base_hash: str, resume: bool = False, progress: bool = True,
                    should_stop: Callable[[], bool] | None = None,
                    on_step: Callable[[str, int, float], None] | None = None, curation: Curation | None = None,
                    paint: Callable[[str, int, int], object] | None = None) -> FineTuneResult:
    """`paint(prompt, seed, size)` paints through the Engine with the embeddings folder and `sample_file(output, token)`:
    the sample pictures every `sample_every` steps (the state folder's samples/), the vectors saved there first."""
    if not settings.token.strip() or settings.vectors < 1 or settings.steps < 1:
        raise BrushworkError("train embedding: give a --token, and --vectors and --steps of at least 1")
    state = run_state(output, {"settings": asdict(settings), "base": base_hash, "data": str(Path(data_dir).resolve())},
                      resume)
    kept = curated_examples(data_dir, output, settings.resolution, "train embedding", curation=curation)
    for module in components.modules():
        module.requires_grad_(False)
    pictures = encode_pictures(components, kept, settings.resolution)
    for picture in pictures:
        if not re.search(rf"(?<![\w-]){re.escape(settings.token)}(?![\w-])", picture.caption):
            picture.caption = f"{settings.token}, {picture.caption}"

    word = NewWord.start(components, settings.token, settings.init_word, settings.vectors)
    unet = components.unet
    optimization = Optimization(word.vectors, lr=settings.lr, weight_decay=0.0, settings=settings.optimization,
                                device=unet.device, modules=[unet, *components.text_encoders])
    objective = Objective(components, settings.optimization.min_snr_gamma)

    start = 0
    saved = state.load("embedding.pt") if resume else None
    if saved is not None:
        if not isinstance(saved["vectors"], list) or len(saved["vectors"]) != len(word.vectors):
            # Before SDXL support the state held one tensor; copying it would broadcast into the wrong layout.
            raise BrushworkError(f"train embedding: the saved state in {state.folder} is of an older layout; "
                                 "start again without --resume")
        with torch.no_grad():
            for live, vectors in zip(word.vectors, saved["vectors"]):
                live.copy_(vectors)
        optimization.load_state_dict(saved["optimization"])
        start = int(saved["step"])
    order = batch_order(pictures, settings.batch_size, settings.seed)

    def loss_of(micro: int) -> torch.Tensor:
        batch = order(micro)
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + micro)
        noisy, timesteps, target = objective.noisy([pictures[i] for i in batch], generator)
        text = encode_captions(components, [pictures[i].caption for i in batch], [pictures[i].bucket for i in batch],
                               [word])
        return objective.loss(unet, noisy, timesteps, target, text)

    def checkpoint(done: int) -> None:
        if optimization.is_main:
            state.save("embedding.pt", {"step": done, "vectors": [v.detach().clone() for v in word.vectors],
                                        "optimization": optimization.state_dict()})

    result = run_fine_tune("embedding", start, settings, optimization, loss_of, checkpoint, [],
                           RunControls(progress, should_stop, on_step), samples=state.folder / "samples", paint=paint,
                           sample_prompt=settings.sample_prompt or pictures[0].caption,
                           before_sample=lambda: _save_vectors(word, sample_file(output, settings.token), {}))
    metadata = {"token": settings.token, "init_word": settings.init_word, "step": str(settings.steps),
                "sd_checkpoint": base_hash[:10], "trained_at": f"{time.time():.0f}"}
    optimization.finish()
    if optimization.is_main:
        _save_vectors(word, output, metadata)
    return FineTuneResult(output, settings.steps, result.losses, result.seconds, len(kept))


def _save_vectors(word: NewWord, path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(embedding_state(word.vectors), str(path), metadata=metadata)
