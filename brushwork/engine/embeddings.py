"""Textual inversion: embeddings from the models folder's `embeddings/`, used by file name in prompts.

An embedding is a few learnt token vectors. As in A1111, writing its file name in a prompt puts its vectors
where the name's tokens were (weights such as `(name:1.2)` apply to them as to any word); the text encoder's
own vocabulary is never changed: during one encoding, a forward hook on its token-embedding layer overwrites
the rows the prompt reserved for the vectors.

Files as people share them: `.safetensors` with `emb_params` (SD 1.x/2.x) or `clip_l` + `clip_g` (SDXL), the
layouts `embedding_state` writes; A1111's `.pt` (`string_to_param`), diffusers' `learned_embeds.bin`
(`{token: vector}`), only with the pickle opt-in and then read with `weights_only`. A LoRA file may bundle
embeddings of its own (A1111's `bundle_emb.*` keys, `split_bundled`): a job that uses the LoRA knows them too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from brushwork.errors import ModelLoadError
from brushwork.models.single_file import PICKLE_SUFFIXES, read_pickled, read_state_dict

SDXL_KEYS = ("clip_l", "clip_g")  # SDXL files: the vectors of each text encoder, in the components' order
BUNDLE_PREFIX = "bundle_emb."  # embeddings inside a LoRA file, which come with the LoRA


@dataclass(frozen=True)
class Embedding:
    """One embedding file: its vectors for each text encoder (one entry on SD 1.x/2.x, two on SDXL)."""

    name: str
    path: Path
    vectors: tuple[torch.Tensor, ...]  # [n, width] per text encoder

    @property
    def count(self) -> int:
        return self.vectors[0].shape[0]

    def fits(self, widths: list[int]) -> bool:
        """Whether it was made for text encoders of these widths (an SD 1.x embedding is no SDXL one)."""
        return len(self.vectors) == len(widths) and all(v.shape[-1] == w for v, w in zip(self.vectors, widths))


def load_embedding(path: Path, *, allow_pickle: bool) -> Embedding:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        state = read_pickled(path, allow_pickle=allow_pickle)
        if isinstance(state, torch.Tensor):
            state = {"*": state}
        if isinstance(state, dict) and isinstance(state.get("string_to_param"), dict):  # A1111's own training output
            state = state["string_to_param"]
        if not isinstance(state, dict):
            raise ModelLoadError(f"embedding {path.name}: not a textual inversion")
        state = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    else:
        state = read_state_dict(path, allow_pickle=allow_pickle)
    return embedding_from_state(path.stem, path, state)


def embedding_from_state(name: str, path: Path, state: dict[str, torch.Tensor]) -> Embedding:
    """The embedding `name` from its tensors in any of the layouts above; `path` is the file they came from."""
    if all(key in state for key in SDXL_KEYS):
        vectors = tuple(_rows(state[key], path) for key in SDXL_KEYS)
    elif "emb_params" in state:
        vectors = (_rows(state["emb_params"], path),)
    elif len(state) == 1 and isinstance(next(iter(state.values())), torch.Tensor):  # {"<token>": vector}, {"*": ...}
        vectors = (_rows(next(iter(state.values())), path),)
    else:
        keys = ", ".join(list(state)[:4])
        raise ModelLoadError(f"embedding {path.name}: not a textual inversion (keys: {keys}); expected emb_params, "
                             "clip_l + clip_g, string_to_param or one token's vector")
    if len({v.shape[0] for v in vectors}) != 1:
        raise ModelLoadError(f"embedding {path.name}: its text encoders' vectors differ in count")
    return Embedding(name, path, vectors)


def embedding_state(vectors: list[torch.Tensor], bundled: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an embedding file holding these vectors (one [n, width] per text encoder, in the
    components' order): `emb_params` for one encoder, SDXL's `clip_l` + `clip_g` for two, as A1111, ComfyUI and
    diffusers' SDXL `load_textual_inversion` read them. `bundled`: inside a LoRA file, where A1111 names one
    encoder's vectors `string_to_param.*`."""
    tensors = [v.detach().float().cpu().contiguous() for v in vectors]
    if len(tensors) == len(SDXL_KEYS):
        return dict(zip(SDXL_KEYS, tensors))
    return {"string_to_param.*" if bundled else "emb_params": tensors[0]}


def split_bundled(path: Path, state: dict[str, torch.Tensor]) -> tuple[list[Embedding], dict[str, torch.Tensor]]:
    """A LoRA file's bundled embeddings (A1111's `bundle_emb.NAME.string_to_param.*`, `bundle_emb.NAME.clip_l`
    and `.clip_g` on SDXL, `bundle_emb.NAME.emb_params`) and the file's other tensors."""
    bundled: dict[str, dict[str, torch.Tensor]] = {}
    rest = {}
    for key, tensor in state.items():
        if key.startswith(BUNDLE_PREFIX) and key.count(".") >= 2:
            name, tail = key[len(BUNDLE_PREFIX):].split(".", 1)
            bundled.setdefault(name, {})[tail.rsplit(".", 1)[-1]] = tensor  # as A1111: the key's last part
        else:
            rest[key] = tensor
    return [embedding_from_state(name, path, tensors) for name, tensors in bundled.items()], rest


def _rows(value: object, path: Path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() not in (1, 2) or value.numel() == 0:
        raise ModelLoadError(f"embedding {path.name}: expected vectors [count, width], got {getattr(value, 'shape', value)!r}")
    return value.detach().float().reshape(-1, value.shape[-1])


class EmbeddingLibrary:
    """The embeddings folder, read once per file version: `for_model` gives those that fit a model."""

    def __init__(self, entries: Callable[[], list[Path]], *, allow_pickle: bool = False):
        self.entries = entries  # the files, listed afresh on every use
        self.allow_pickle = allow_pickle
        self._loaded: dict[tuple[Path, int, int], Embedding | None] = {}
        self._lock = threading.Lock()

    def all(self) -> Iterator[Embedding]:
        """Every readable embedding; a broken file is skipped (A1111 lists it as skipped) until it changes."""
        for path in self.entries():
            stat = path.stat()
            key = (path, stat.st_mtime_ns, stat.st_size)
            with self._lock:
                known = key in self._loaded
            if not known:
                try:
                    embedding = load_embedding(path, allow_pickle=self.allow_pickle)
                except ModelLoadError:
                    embedding = None
                with self._lock:
                    self._loaded[key] = embedding
            if self._loaded[key] is not None:
                yield self._loaded[key]

    def for_model(self, widths: list[int]) -> dict[str, Embedding]:
        """Name -> embedding, for text encoders of these widths."""
        return {embedding.name: embedding for embedding in self.all() if embedding.fits(widths)}


class EmbeddingMatcher:
    """Finds embedding names in a tokenized prompt, longest name first, as A1111's `find_embedding_at_position`."""

    def __init__(self, embeddings: dict[str, Embedding], tokenize: Callable[[list[str]], list[list[int]]]):
        self.embeddings = embeddings
        names = list(embeddings)
        self._by_first: dict[int, list[tuple[list[int], str]]] = {}
        for name, ids in zip(names, tokenize(names) if names else []):
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, name))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda candidate: len(candidate[0]), reverse=True)

    def __call__(self, tokens: list[int], offset: int) -> tuple[int, int, str] | None:
        """(tokens the name spans, vectors it stands for, its name) for a name starting at `offset`."""
        for ids, name in self._by_first.get(tokens[offset], ()):
            if tokens[offset: offset + len(ids)] == ids:
                return len(ids), self.embeddings[name].count, name
        return None


def vectors_hook(rows: dict[int, list[tuple[int, torch.Tensor]]]):
    """A forward hook for a token-embedding layer: in batch row b, put each (position, vectors) in place."""

    def hook(module, inputs, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for batch_row, fixes in rows.items():
            for position, vectors in fixes:
                output[batch_row, position: position + vectors.shape[0]] = vectors.to(output.dtype)
        return output

    return hook
