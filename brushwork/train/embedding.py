"""`brushwork train embedding`: textual inversion, a few new token vectors for an SD 1.x/2.x checkpoint.

Only the vectors learn; the model stays as it is. They start as the encoding of `init_word` and are placed in
each caption where the token is, exactly as the engine places a finished embedding (engine/embeddings.py: a
hook on the token-embedding layer, the vectors never split between chunks), so what trains is what will be
used. A caption without the token gets it in front. The output is A1111's `.safetensors` layout
(`emb_params` [vectors, width]); its file name is the word that calls it in a prompt.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from brushwork.engine.embeddings import EmbeddingMatcher, vectors_hook
from brushwork.errors import BrushworkError
from brushwork.models.components import Components
from brushwork.prompts import build_chunks
from brushwork.train.finetune import (
    Curation,
    FineTuneResult,
    Objective,
    RunControls,
    batch_order,
    curated_examples,
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


class _Learnt:
    """What the prompt matcher needs to know of the embedding being trained: how many vectors it has."""

    def __init__(self, count: int):
        self.count = count


def train_embedding(components: Components, data_dir: Path, output: Path, settings: EmbeddingTrainSettings, *,
                    base_hash: str, resume: bool = False, progress: bool = True,
                    should_stop: Callable[[], bool] | None = None,
                    on_step: Callable[[str, int, float], None] | None = None, curation: Curation | None = None,
                    paint: Callable[[str, int, int], object] | None = None) -> FineTuneResult:
    """`paint(prompt, seed, size)` paints through the Engine with the embeddings folder and `sample_file(output, token)`:
    the sample pictures every `sample_every` steps (the state folder's samples/), the vectors saved there first."""
    if components.model_family.size_conditioning:
        raise BrushworkError("train embedding: SDXL bases are not supported yet; use an SD 1.x or 2.x checkpoint")
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

    tokenizer, text_encoder, unet = components.tokenizers[0], components.text_encoders[0], components.unet
    layer = getattr(text_encoder, "text_model", text_encoder).embeddings.token_embedding

    def tokenize(pieces: list[str]) -> list[list[int]]:
        return tokenizer(pieces, add_special_tokens=False, truncation=False).input_ids

    init_ids = tokenize([settings.init_word])[0]
    if not init_ids:
        raise BrushworkError(f"--init-word {settings.init_word!r} has no tokens")
    with torch.no_grad():
        start_vectors = layer.weight[torch.tensor(init_ids, device=layer.weight.device)].float()
    vectors = start_vectors.mean(0, keepdim=True).repeat(settings.vectors, 1).clone().requires_grad_(True)
    device = unet.device
    optimization = Optimization([vectors], lr=settings.lr, weight_decay=0.0, settings=settings.optimization,
                                device=device, modules=[unet, text_encoder])
    objective = Objective(components, settings.optimization.min_snr_gamma)
    matcher = EmbeddingMatcher({settings.token: _Learnt(settings.vectors)}, tokenize)
    comma = tokenizer.convert_tokens_to_ids(",</w>")

    start = 0
    saved = state.load("embedding.pt") if resume else None
    if saved is not None:
        with torch.no_grad():
            vectors.copy_(saved["vectors"])
        optimization.load_state_dict(saved["optimization"])
        start = int(saved["step"])
    order = batch_order(pictures, settings.batch_size, settings.seed)

    def loss_of(micro: int) -> torch.Tensor:
        batch = order(micro)
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + micro)
        chunks = [build_chunks(pictures[i].caption, tokenize, bos_id=tokenizer.bos_token_id,
                               eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                               comma_id=None if comma == tokenizer.unk_token_id else comma,
                               find_embedding=matcher)[0] for i in batch]  # the first chunk, as trainers use
        ids = torch.tensor([chunk.tokens for chunk in chunks], device=device)
        noisy, timesteps, target = objective.noisy([pictures[i] for i in batch], generator)
        rows = {row: [(position, vectors) for position, _ in chunk.fixes] for row, chunk in enumerate(chunks)}
        handle = layer.register_forward_hook(vectors_hook(rows))
        try:
            context = text_encoder(ids)[0]
        finally:
            handle.remove()
        return objective.loss(unet, noisy, timesteps, target, context)

    def checkpoint(done: int) -> None:
        if optimization.is_main:
            state.save("embedding.pt", {"step": done, "vectors": vectors.detach().clone(),
                                        "optimization": optimization.state_dict()})

    result = run_fine_tune("embedding", start, settings, optimization, loss_of, checkpoint, [],
                           RunControls(progress, should_stop, on_step), samples=state.folder / "samples", paint=paint,
                           sample_prompt=settings.sample_prompt or pictures[0].caption,
                           before_sample=lambda: _save_vectors(vectors, sample_file(output, settings.token), {}))
    metadata = {"token": settings.token, "init_word": settings.init_word, "step": str(settings.steps),
                "sd_checkpoint": base_hash[:10], "trained_at": f"{time.time():.0f}"}
    optimization.finish()
    if optimization.is_main:
        _save_vectors(vectors, output, metadata)
    return FineTuneResult(output, settings.steps, result.losses, result.seconds, len(kept))


def _save_vectors(vectors: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": vectors.detach().float().cpu().contiguous()}, str(path), metadata=metadata)
