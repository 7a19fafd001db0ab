"""A1111's "SD upscale" img2img script as an engine stage: a picture upscaled, then repainted in tiles.

    1. upscale   the init picture by `scale` with an image upscaler (sides down to a multiple of 8, as A1111)
    2. split     into tiles of the recipe's width x height, `overlap` pixels shared with each neighbour,
                 spread evenly so the last tile ends on the picture's edge (A1111's `split_grid`)
    3. repaint   each tile with an ordinary img2img pass (the Engine's, handed in as `run_tiles`); tile t of
                 the picture with seed s uses seed s + t, as A1111 (batch size 1) seeds its tile passes
    4. combine   the tiles back in row order, each one's first `overlap` columns (and each row's first
                 `overlap` lines) faded in over what is already there (A1111's `combine_grid`)

Pixels only: no tensors here. The result is as large as the upscaled picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from brushwork.errors import RecipeError
from brushwork.recipe import SdUpscale

NO_UPSCALER = "None"  # A1111's first upscaler: tiles of the init picture as it is, `scale` ignored

ImageUpscaler = Callable[[Image.Image, str, float], Image.Image]
# (tile pictures, their seeds, tiles of this picture repainted before them, tiles in the picture) -> repainted tiles
TileRunner = Callable[[list[Image.Image], list[int], int, int], list[Image.Image]]


@dataclass(frozen=True)
class Grid:
    """Where the tiles of a picture lie: `rows` of (top, [left, ...]); a tile larger than the picture has a
    negative position (its outside is black, as a Pillow crop past the edge gives)."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    overlap: int
    rows: tuple[tuple[int, tuple[int, ...]], ...]

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Every tile's (left, top, right, bottom), row by row: the order tiles are repainted and seeded."""
        return [(x, y, x + self.tile_width, y + self.tile_height) for y, columns in self.rows for x in columns]


def is_no_upscaler(name: str) -> bool:
    return name.strip().lower() == NO_UPSCALER.lower()


def upscaled_size(size: tuple[int, int], settings: SdUpscale) -> tuple[int, int]:
    """The size SD upscale paints at (and returns): the init size times `scale`, each side down to a multiple
    of 8 as A1111's upscalers round; the init size itself for the 'None' upscaler."""
    if is_no_upscaler(settings.upscaler):
        return size
    width, height = (int(side * settings.scale // 8 * 8) for side in size)
    if width < 8 or height < 8:
        raise RecipeError(f"sd_upscale: the {size[0]}x{size[1]} init picture upscaled by {settings.scale:g} "
                          f"is {width}x{height}; it must be at least 8 pixels on each side")
    return width, height


def upscale_source(image: Image.Image, settings: SdUpscale, upscale_image: ImageUpscaler) -> Image.Image:
    """Step 1: the init picture at `upscaled_size` (an upscaler's own rounding is stretched to it, as A1111 does)."""
    size = upscaled_size(image.size, settings)
    if is_no_upscaler(settings.upscaler):
        return image
    picture = upscale_image(image, settings.upscaler, settings.scale)
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    return picture.convert("RGB")


def split_grid(size: tuple[int, int], tile_width: int, tile_height: int, overlap: int) -> Grid:
    """Step 2: as few tiles as cover the picture with at least `overlap` pixels shared between neighbours,
    spread evenly (positions truncated to whole pixels), the last one flush with the far edge."""
    if overlap >= min(tile_width, tile_height):
        raise RecipeError(f"sd_upscale.overlap: {overlap} must be smaller than the tile size "
                          f"(width x height = {tile_width}x{tile_height})")
    width, height = size

    def positions(length: int, tile: int) -> tuple[int, ...]:
        count = max(1, math.ceil((length - overlap) / (tile - overlap)))
        spacing = (length - tile) / (count - 1) if count > 1 else 0
        starts = []
        for index in range(count):
            start = int(index * spacing)
            starts.append(length - tile if start + tile >= length else start)
        return tuple(starts)

    columns = positions(width, tile_width)
    return Grid(width, height, tile_width, tile_height, overlap, tuple((y, columns) for y in positions(height, tile_height)))


def crop_tiles(picture: Image.Image, grid: Grid) -> list[Image.Image]:
    return [picture.crop(box) for box in grid.boxes]


def combine_grid(grid: Grid, tiles: list[Image.Image]) -> Image.Image:
    """Step 4: the tiles pasted back in order. Past the first tile of a row, a tile's first `overlap` columns
    fade in from 0 (over the tile before it) to almost 1; past the first row, a row's first `overlap` lines
    fade in over the row above. What a later tile covers beyond that, it overwrites."""
    if len(tiles) != len(grid.boxes):
        raise ValueError(f"{len(tiles)} tiles for a grid of {len(grid.boxes)}")
    overlap, tile_height = grid.overlap, grid.tile_height
    ramp = (np.arange(overlap, dtype=np.float32) * 255 / max(overlap, 1)).astype(np.uint8)  # A1111's mask values
    fade_columns = Image.fromarray(np.repeat(ramp[None, :], tile_height, axis=0), "L") if overlap else None
    fade_lines = Image.fromarray(np.repeat(ramp[:, None], grid.width, axis=1), "L") if overlap else None

    combined = Image.new("RGB", (grid.width, grid.height))
    pending = iter(tiles)
    for row_index, (y, columns) in enumerate(grid.rows):
        row = Image.new("RGB", (grid.width, tile_height))
        for column_index, x in enumerate(columns):
            tile = next(pending)
            if column_index == 0 or fade_columns is None:
                row.paste(tile, (x, 0))
                continue
            row.paste(tile.crop((0, 0, overlap, tile_height)), (x, 0), mask=fade_columns)
            row.paste(tile.crop((overlap, 0, tile.width, tile_height)), (x + overlap, 0))
        if row_index == 0 or fade_lines is None:
            combined.paste(row, (0, y))
            continue
        combined.paste(row.crop((0, 0, grid.width, overlap)), (0, y), mask=fade_lines)
        combined.paste(row.crop((0, overlap, grid.width, tile_height)), (0, y + overlap))
    return combined


def tile_seeds(seed: int, count: int) -> list[int]:
    """A1111 gives each tile pass the next seed (batch size 1: tile t gets seed + t). Here tile t gets seed + t
    at any tile batch size, so the batch size never changes the picture."""
    return [seed + index for index in range(count)]


def sd_upscale(
    image: Image.Image,
    settings: SdUpscale,
    tile_size: tuple[int, int],
    seed: int,
    upscale_image: ImageUpscaler,
    run_tiles: TileRunner,
) -> Image.Image:
    """One SD-upscaled picture from `image`, its tiles repainted by `run_tiles` in passes of `settings.batch_size`."""
    # 1. upscale
    picture = upscale_source(image.convert("RGB"), settings, upscale_image)
    # 2. split
    grid = split_grid(picture.size, *tile_size, settings.overlap)
    tiles = crop_tiles(picture, grid)
    # 3. repaint, one seed per tile
    seeds = tile_seeds(seed, len(tiles))
    repainted: list[Image.Image] = []
    for start in range(0, len(tiles), settings.batch_size):
        end = start + settings.batch_size
        repainted += run_tiles(tiles[start:end], seeds[start:end], start, len(tiles))
    # 4. combine
    return combine_grid(grid, repainted)
