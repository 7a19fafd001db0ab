"""Upscaling a picture by A1111 upscaler name: Pillow's "Lanczos" and "Nearest", and every
super-resolution network in the models folder's `ESRGAN/` (named by file, without the suffix).

A network has a fixed scale (often 4x). As A1111 does, it runs until the picture is at least as
large as asked (at most 3 passes: a 2x network asked for 8x runs three times), and Lanczos then
resizes to the exact size. A target width and height of another aspect ratio is covered and
centre-cropped (A1111's "Crop to fit"), never stretched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
from PIL import Image

from brushwork.errors import BrushworkError, ModelLoadError
from brushwork.upscale.networks import Network, NetworkCache
from brushwork.upscale.tiles import MIN_TILE, TileProgress, TileSettings, run_tiled

if TYPE_CHECKING:
    from brushwork.models.store import ModelEntry, ModelStore

LANCZOS = Image.Resampling.LANCZOS
BUILTIN = {"Lanczos": LANCZOS, "Nearest": Image.Resampling.NEAREST}
MAX_SCALE = 8.0
MAX_SIDE = 16384
MAX_PASSES = 3  # A1111's limit on network passes

Scale = Union[float, tuple[int, int]]  # a factor, or a target (width, height)


@dataclass(frozen=True)
class SizePlan:
    """How a picture's size changes: scaled by `factor` to `resized`, then centre-cropped to `final`."""

    factor: float
    resized: tuple[int, int]
    final: tuple[int, int]

    @property
    def cropped(self) -> bool:
        return self.resized != self.final


@dataclass(frozen=True)
class Upscaler:
    """An upscaler found by name: a Pillow filter, or a network file."""

    name: str  # as listed (and as written into infotexts)
    resample: Image.Resampling | None = None
    path: Path | None = None


def plan_size(source: tuple[int, int], scale: Scale) -> SizePlan:
    """The sizes upscaling a `source` (width, height) picture by `scale` makes. Raises BrushworkError
    for a factor outside (0, 8] or a result wider or taller than 16384 pixels."""
    width, height = source
    if width < 1 or height < 1:
        raise BrushworkError(f"cannot upscale an empty {width}x{height} picture")
    if isinstance(scale, tuple):
        target_width, target_height = (int(side) for side in scale)
        if target_width < 1 or target_height < 1:
            raise BrushworkError(f"the target size must be positive, got {target_width}x{target_height}")
        factor = max(target_width / width, target_height / height)
        final = (target_width, target_height)
        resized = (max(target_width, round(width * factor)), max(target_height, round(height * factor)))
        if factor > MAX_SCALE:
            raise BrushworkError(
                f"{target_width}x{target_height} is {factor:g} times the {width}x{height} picture; "
                f"upscale by at most {MAX_SCALE:g} times"
            )
    else:
        factor = float(scale)
        if not (math.isfinite(factor) and 0 < factor <= MAX_SCALE):
            raise BrushworkError(f"the scale factor must be more than 0 and at most {MAX_SCALE:g}, got {scale:g}")
        final = resized = (max(1, round(width * factor)), max(1, round(height * factor)))
    if max(resized) > MAX_SIDE:
        raise BrushworkError(
            f"upscaling the {width}x{height} picture to {resized[0]}x{resized[1]} exceeds the "
            f"{MAX_SIDE} pixel limit on a side; ask for a smaller scale or size"
        )
    return SizePlan(factor, resized, final)


def list_upscalers(store: ModelStore | None) -> list[str]:
    """The names `upscale` accepts: the built-in filters, then each network file in `ESRGAN/`."""
    names = list(BUILTIN)
    for entry in store.entries("upscaler") if store is not None else []:
        name = _entry_names(entry)[1]
        if not entry.is_diffusers_folder and name not in names:
            names.append(name)
    return names


def find_upscaler(name: str, store: ModelStore | None) -> Upscaler:
    """The upscaler `name` means (built-in names in any case); a BrushworkError listing the choices if none."""
    for builtin, resample in BUILTIN.items():
        if name.strip().lower() == builtin.lower():
            return Upscaler(builtin, resample=resample)
    if store is not None:
        wanted = name.rsplit(" [", 1)[0] if name.endswith("]") else name  # A1111 titles: "name [hash]"
        listed = any(wanted in _entry_names(entry) for entry in store.entries("upscaler"))
        if listed or (store.allow_paths and Path(name).expanduser().is_file()):
            path = store.resolve("upscaler", name)  # confined to the models folder unless paths are allowed
            return Upscaler(_display_name(path, store), path=path)
    where = (
        "no --models-dir given, so only the built-in ones" if store is None or store.models_dir is None
        else f"networks are read from {_folder(store)}"
    )
    raise ModelLoadError(f"unknown upscaler {name!r}; choose one of: {', '.join(list_upscalers(store))} ({where})")


def upscale(
    image: Image.Image,
    upscaler: str | Upscaler,
    scale: Scale,
    store: ModelStore | None = None,
    *,
    cache: NetworkCache | None = None,
    tiles: TileSettings = TileSettings(),
    progress: TileProgress | None = None,
) -> Image.Image:
    """`image` upscaled by `upscaler` (a name, or what `find_upscaler` returned), by a factor or to a
    target (width, height).

    Networks come from `store`'s `ESRGAN/` folder and run on its device (with its pickle policy; on
    the CPU, pickles refused, without a store), kept in `cache` when one is given; they run in blended tiles of `tiles`, reporting each finished
    tile to `progress(done, total)`. Transparency is kept (its alpha channel is resized with Lanczos).
    """
    if isinstance(upscaler, str):
        upscaler = find_upscaler(upscaler, store)
    plan = plan_size(image.size, scale)
    image = _workable(image)
    if upscaler.resample is not None:
        result = image.resize(plan.resized, upscaler.resample)
    else:
        assert upscaler.path is not None  # find_upscaler gives networks a path
        cache = cache if cache is not None else NetworkCache(max_loaded=1)
        if store is not None:
            network = cache.get(upscaler.path, allow_pickle=store.allow_pickle, device=store.device, dtype=store.dtype)
        else:
            network = cache.get(upscaler.path, allow_pickle=False, device="cpu", dtype=torch.float32)
        result = upscale_with_network(image.convert("RGB"), network, plan, tiles=tiles, progress=progress)
        if image.mode == "RGBA":
            result.putalpha(image.getchannel("A").resize(plan.resized, LANCZOS))
    return _centre_crop(result, plan.final)


def upscale_with_network(
    image: Image.Image,
    network: Network,
    plan: SizePlan,
    *,
    tiles: TileSettings = TileSettings(),
    progress: TileProgress | None = None,
) -> Image.Image:
    """An RGB picture run through `network` as A1111 does, then Lanczos-resized to `plan.resized`."""
    current = image
    width, height = plan.resized
    for pass_index in range(MAX_PASSES):
        large_enough = current.width >= width and current.height >= height
        # A1111 runs a network once even at scale 1 (1x restoration networks, or 4x-then-shrink as a
        # sharpener), but never to make a picture smaller.
        if large_enough and (pass_index > 0 or plan.factor != 1):
            break
        if max(current.size) * network.scale > MAX_SIDE:
            # An intermediate past the size limit would only be shrunk again: give this pass a
            # smaller input whose output just covers the target.
            current = current.resize((math.ceil(width / network.scale), math.ceil(height / network.scale)), LANCZOS)
        before = current.size
        current = _run_network(network, current, tiles, progress)
        if current.size == before:  # a 1x network: another pass would not get closer
            break
    if current.size != plan.resized:
        current = current.resize(plan.resized, LANCZOS)
    return current


def _run_network(network: Network, image: Image.Image, tiles: TileSettings, progress: TileProgress | None) -> Image.Image:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)[None]
    pixels = (pixels.float() / 255).to(device=network.device, dtype=network.dtype)
    if network.needs_whole_picture:
        tiles = TileSettings(size=max(MIN_TILE, *image.size), overlap=0)
    return Image.fromarray(run_tiled(network, pixels, network.scale, tiles, progress=progress))


def _workable(image: Image.Image) -> Image.Image:
    """L, RGB and RGBA as they are; other modes (palette, 1-bit, CMYK, ...) as RGB, or RGBA when transparent."""
    if image.mode in ("L", "RGB", "RGBA"):
        return image
    transparent = "A" in image.getbands() or "transparency" in image.info
    return image.convert("RGBA" if transparent else "RGB")


def _centre_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


def _entry_names(entry: ModelEntry) -> tuple[str, str, str, str]:
    """Every name `ModelStore.resolve` accepts for an entry; the second is the one we list."""
    relative = Path(entry.name)
    return entry.name, relative.with_suffix("").as_posix(), relative.name, relative.stem


def _folder(store: ModelStore) -> Path | None:
    """The store's upscaler folder (`ESRGAN/`), resolved."""
    from brushwork.models.store import FOLDERS

    return (store.models_dir / FOLDERS["upscaler"]).resolve() if store.models_dir is not None else None


def _display_name(path: Path, store: ModelStore) -> str:
    folder = _folder(store)
    if folder is not None and path.is_relative_to(folder):
        return path.relative_to(folder).with_suffix("").as_posix()
    return path.stem
