"""The training pictures: a folder written by `brushwork data shapes` (`brushwork.shapes.make_dataset`).

The folder holds `00000.png` + `00000.txt` (its caption) per picture. Everything is read into memory at
once - 50,000 pictures of 64x64 are 600 MB of uint8 - because the CPU is the bottleneck, not memory.
Pictures are never flipped: captions name left and right.

Captions are tokenized exactly as the engine tokenizes a prompt (`brushwork.prompts.build_chunks`:
BOS, tokens, EOS, then EOS-padding to 77), so the text encoder trains on what it will be given.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPTokenizer

from brushwork.errors import BrushworkError

TOKENS = 77  # one A1111 chunk: BOS + 75 + EOS


@dataclass
class ShapesData:
    """Pictures as uint8 [N, 3, H, W] and their captions."""

    images: torch.Tensor
    captions: list[str]
    fingerprint: str  # sha256 over names and captions, to tell on --resume that the data is the same
    names: list[str] = field(default_factory=list)  # the pictures' file names, in order

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])


def load_folder(folder: str | Path, max_images: int | None = None) -> ShapesData:
    """Read every NNNNN.png with its NNNNN.txt caption (sorted by name), at most `max_images` of them."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise BrushworkError(
            f"training data folder not found: {folder}; draw one with `brushwork data shapes {folder} --count 20000`"
        )
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        raise BrushworkError(f"{folder} holds no .png pictures; draw some with `brushwork data shapes {folder} --count 20000`")
    if max_images is not None:
        pngs = pngs[:max_images]
    arrays, captions = [], []
    digest = hashlib.sha256()
    for png in pngs:
        caption_file = png.with_suffix(".txt")
        if not caption_file.is_file():
            raise BrushworkError(f"{png} has no caption file {caption_file.name}; is {folder} a `brushwork data` folder?")
        caption = caption_file.read_text(encoding="utf-8").strip()
        try:
            with Image.open(png) as image:
                array = np.asarray(image.convert("RGB"))
        except OSError as error:
            raise BrushworkError(f"cannot read {png}: {error}") from error
        if arrays and array.shape != arrays[0].shape:
            raise BrushworkError(f"{png.name} is {array.shape[1]}x{array.shape[0]} but {pngs[0].name} is "
                                 f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; all pictures must share one size")
        arrays.append(array)
        captions.append(caption)
        digest.update(f"{png.name}\0{caption}\n".encode())
    side = arrays[0].shape[0]
    if arrays[0].shape[0] != arrays[0].shape[1] or side % 16:
        raise BrushworkError(f"the pictures are {arrays[0].shape[1]}x{side}; training needs square pictures with a side "
                             "divisible by 16 (e.g. --size 64)")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ShapesData(images=images, captions=captions, fingerprint=digest.hexdigest(), names=[p.name for p in pngs])


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the VAE's input range."""
    return images.float().div(127.5).sub(1.0)


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids [N, 77] laid out as the engine lays out a prompt of under 75 tokens."""
    ids = tokenizer(captions, padding="max_length", max_length=TOKENS, truncation=True, return_tensors="pt").input_ids
    return ids.to(torch.int32)


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The order pictures are visited in during `epoch`: a permutation fixed by (seed, epoch)."""
    return torch.randperm(count, generator=seeded_generator("epoch", seed, epoch))


def batch_indices(count: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the pictures in batch `step` (0-based): consecutive slices of per-epoch permutations.

    A pure function of its arguments, so a resumed run draws exactly the batches an uninterrupted one would.
    """
    start = step * batch_size
    epoch, offset = divmod(start, count)
    order = epoch_order(count, seed, epoch)
    picked = [order[offset : offset + batch_size]]
    taken = picked[0].numel()
    while taken < batch_size:  # the batch runs over the end of an epoch
        epoch += 1
        order = epoch_order(count, seed, epoch)
        picked.append(order[: batch_size - taken])
        taken += picked[-1].numel()
    return torch.cat(picked)


def seeded_generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from `key` (e.g. ("diffusion", seed, step)): the same key, the same numbers.

    Every step draws from its own generator, so resuming needs no saved random state.
    """
    digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
