"""What teaches the model where to paint: object masks, position labels and the text encoder's position probe.

Trained from scratch on the plain diffusion loss, the model learned colours, shapes and backgrounds but put
objects wherever the starting noise pointed, whatever the prompt said (position 9%, chance 11%). Three
things stood in the way, and each has a remedy here (measured in docs/benchmarks.md):

- The text encoder had no CLIP pre-training to keep words apart. "top left" and "bottom right" left its
  output almost unchanged (relative difference 0.01 on the tokens after them, colour words: 0.9), so the
  U-Net had nothing to read. `PositionProbe` is a cosine classifier that must tell the caption's position
  (or none) from every token state after the first few; its loss keeps position words distinct.
- Where an object sits matters only at high noise (below that, x_t shows it) and only 30% of captions say
  where: per batch that left a few noisy examples to learn from. `layout_fraction` of each batch is drawn
  from pictures whose caption names a position, noised in the upper half of the schedule.
- Position is worth ~4% of a latent's variance (the background colour: 58%), so its gradient drowned.
  `foreground_weight` adds loss weight on the latent pixels under objects.
  It also pays the model to paint more object than the data has (count fell from 84% to 54%), so the
  shipped model's last, short fine-tune ran without it.

The probe is a training aid only: it is not part of the saved model, whose layout stays SD 1.x's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F

from brushwork.errors import BrushworkError
from brushwork.shapes import POSITIONS
from brushwork.shapes.draw import parse_prompt

NO_POSITION = len(POSITIONS)  # the class of captions that name no position (and of dropped captions)
PROBE_SKIP_TOKENS = 8  # BOS and the first words: they come before any position phrase, so carry none
PROBE_SCALE = 10.0  # the cosine classifier's logit scale: a margin only a large difference between states meets


@dataclass
class LayoutTargets:
    """Per picture: its caption's position class, and which latent pixels its objects cover (None: unknown)."""

    positions: torch.Tensor  # [N] int64, an index into POSITIONS or NO_POSITION
    masks: torch.Tensor | None  # [N, 1, h, w] float32 in {0, 1}

    @cached_property
    def positioned(self) -> torch.Tensor:
        """Indices of the pictures whose caption names a position (read every step, so computed once)."""
        return torch.nonzero(self.positions != NO_POSITION).flatten()


def position_labels(captions: list[str]) -> torch.Tensor:
    """The position each caption states, as read by the prompt parser the evaluation uses."""
    labels = []
    for caption in captions:
        position = parse_prompt(caption).position
        labels.append(POSITIONS.index(position) if position in POSITIONS else NO_POSITION)
    return torch.tensor(labels, dtype=torch.int64)


def object_masks(folder: str | Path, names: list[str], latent_size: int) -> torch.Tensor | None:
    """Latent-resolution masks of the objects in each picture, from the folder's metadata.jsonl.

    An object covers the latent pixels whose centre lies within its radius plus half a pixel (a disc: the
    weighting needs where the object is, not its outline). None when the folder has no metadata.jsonl.
    """
    path = Path(folder).expanduser() / "metadata.jsonl"
    if not path.is_file():
        return None
    objects = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                objects[record["file"]] = [(o["centre"][0], o["centre"][1], o["radius"]) for o in record["objects"]]
            except (ValueError, KeyError, IndexError, TypeError) as error:
                raise BrushworkError(f"{path}, line {number}: not a `brushwork data shapes` record ({error!r}); "
                                     "fix or delete the file, or train with --foreground-weight 0") from error
    centres = (torch.arange(latent_size, dtype=torch.float32) + 0.5) / latent_size
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    masks = torch.zeros(len(names), 1, latent_size, latent_size)
    for index, name in enumerate(names):
        for x, y, radius in objects.get(name, ()):
            inside = (xs - x) ** 2 + (ys - y) ** 2 < (radius + 0.5 / latent_size) ** 2
            masks[index, 0] = torch.maximum(masks[index, 0], inside.float())
    return masks


class PositionProbe(torch.nn.Module):
    """A cosine classifier reading the caption's position class from each text-encoder token state."""

    def __init__(self, width: int, generator: torch.Generator | None = None):
        super().__init__()
        self.classes = torch.nn.Parameter(torch.randn(NO_POSITION + 1, width, generator=generator) / width**0.5)

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the batch's token states from PROBE_SKIP_TOKENS on."""
        states = F.normalize(hidden[:, PROBE_SKIP_TOKENS:].float(), dim=-1)
        logits = PROBE_SCALE * states @ F.normalize(self.classes, dim=-1).T
        targets = labels[:, None].expand(-1, states.shape[1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
