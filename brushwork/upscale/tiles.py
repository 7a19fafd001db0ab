"""Running a super-resolution network tile by tile, so memory stays flat however large the picture.

A network such as ESRGAN holds 64-channel activations at the output size; a 2048x2048 picture
upscaled 4x whole would need tens of GiB. We cut the input into tiles of `size` pixels that overlap
by `overlap` pixels, run each, and blend the overlaps with linear ramps: each tile's weight falls to
zero towards the edge it shares with a neighbour, where it saw the least context, so the result has
no seams. Weights are separable (row ramp x column ramp), so normalising by their sum needs only two
1-D sums, and rows are finished strip by strip: only a strip of float pixels is held besides the
8-bit result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from brushwork.errors import BrushworkError

NetworkFunction = Callable[[torch.Tensor], torch.Tensor]  # [1, C, h, w] in [0, 1] -> [1, C, h*s, w*s] in [0, 1]
TileProgress = Callable[[int, int], None]  # (tiles done, tiles in all)

MIN_TILE = 16


@dataclass(frozen=True)
class TileSettings:
    """Tile side and overlap, in input pixels (A1111's ESRGAN defaults are 192 and 8; a wider overlap
    gives each pixel more context at a small cost)."""

    size: int = 256
    overlap: int = 32

    def __post_init__(self) -> None:
        if self.size < MIN_TILE:
            raise BrushworkError(f"tile size must be at least {MIN_TILE} pixels, got {self.size}")
        if not 0 <= self.overlap <= self.size // 2:
            raise BrushworkError(f"tile overlap must be between 0 and half the tile size ({self.size // 2}), got {self.overlap}")


def tile_spans(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) of each tile along one side of `length` pixels: the fewest tiles of `size` that
    overlap by at least `overlap`, spread evenly so that the last one ends at the edge."""
    if length <= size:
        return [(0, length)]
    count = math.ceil((length - overlap) / (size - overlap))
    starts = [round(index * (length - size) / (count - 1)) for index in range(count)]
    return [(start, start + size) for start in starts]


def blend_weights(spans: list[tuple[int, int]], scale: int) -> list[torch.Tensor]:
    """Each tile's weight along one side, in output pixels, normalised so that they sum to 1.

    Inside an overlap the weight ramps linearly, from ~0 at the tile's own edge to 1 where the
    neighbour's edge lies; elsewhere it is 1.
    """
    total = spans[-1][1] * scale
    weights = []
    for index, (start, end) in enumerate(spans):
        weight = torch.ones((end - start) * scale)
        if index > 0:  # rising over the overlap with the previous tile
            width = (spans[index - 1][1] - start) * scale
            if width > 0:
                weight[:width] = torch.minimum(weight[:width], (torch.arange(width) + 0.5) / width)
        if index < len(spans) - 1:  # falling over the overlap with the next tile
            width = (end - spans[index + 1][0]) * scale
            if width > 0:
                weight[-width:] = torch.minimum(weight[-width:], (torch.arange(width, 0, -1) - 0.5) / width)
        weights.append(weight)
    coverage = torch.zeros(total)
    for (start, _), weight in zip(spans, weights):
        coverage[start * scale : start * scale + len(weight)] += weight
    return [weight / coverage[start * scale : start * scale + len(weight)] for (start, _), weight in zip(spans, weights)]


@torch.no_grad()
def run_tiled(
    network: NetworkFunction,
    image: torch.Tensor,
    scale: int,
    settings: TileSettings,
    *,
    progress: TileProgress | None = None,
) -> np.ndarray:
    """Run `network` over `image` ([1, C, H, W] in [0, 1]) in blended tiles; the result as 8-bit
    [H*scale, W*scale, C] on the CPU."""
    _, channels, height, width = image.shape
    rows = tile_spans(height, settings.size, settings.overlap)
    columns = tile_spans(width, settings.size, settings.overlap)
    row_weights = [w.to(image.device) for w in blend_weights(rows, scale)]
    column_weights = [w.to(image.device) for w in blend_weights(columns, scale)]
    out_height, out_width = height * scale, width * scale
    result = np.empty((out_height, out_width, channels), dtype=np.uint8)

    # Output rows [pending_top, ...) that still await contributions from later strips.
    pending = torch.zeros(channels, 0, out_width, device=image.device)
    pending_top = 0
    done, total = 0, len(rows) * len(columns)
    for row_index, (top, bottom) in enumerate(rows):
        strip = torch.zeros(channels, (bottom - top) * scale, out_width, device=image.device)
        for column_index, (left, right) in enumerate(columns):
            tile = network(image[:, :, top:bottom, left:right])[0].float()
            expected = ((bottom - top) * scale, (right - left) * scale)
            if tuple(tile.shape[-2:]) != expected:
                raise BrushworkError(
                    f"the upscaler returned a {tile.shape[-1]}x{tile.shape[-2]} tile for a "
                    f"{right - left}x{bottom - top} one; its scale is not the {scale}x it declares"
                )
            strip[:, :, left * scale : right * scale] += tile * column_weights[column_index]
            done += 1
            if progress is not None:
                progress(done, total)
        strip *= row_weights[row_index][:, None]

        # Add the strip, then hand over every row no later strip reaches (they start further down).
        strip_top, strip_bottom = top * scale - pending_top, bottom * scale - pending_top
        if strip_bottom > pending.shape[1]:
            grow = torch.zeros(channels, strip_bottom - pending.shape[1], out_width, device=image.device)
            pending = torch.cat([pending, grow], dim=1)
        pending[:, strip_top:strip_bottom] += strip
        finished_until = rows[row_index + 1][0] * scale if row_index + 1 < len(rows) else out_height
        count = finished_until - pending_top
        result[pending_top:finished_until] = _to_uint8(pending[:, :count])
        pending, pending_top = pending[:, count:], finished_until
    return result


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[C, h, w] in [0, 1] -> [h, w, C] 8-bit, rounded."""
    return pixels.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
