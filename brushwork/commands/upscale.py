"""`brushwork upscale`: A1111's "extras" tab. Pictures in, upscaled PNGs out (keeping their infotext)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from brushwork.commands.common import add_model_options
from brushwork.errors import BrushworkError

if TYPE_CHECKING:  # imported when run, so that `brushwork --help` stays fast
    from brushwork.models.store import ModelStore
    from brushwork.upscale import Scale, TileSettings, Upscaler

INFOTEXT_FORMATS = ("PNG", "JPEG", "MPO", "WEBP")  # the formats read_png_info reads infotext from


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("upscale", help="upscale pictures (A1111's extras tab)")
    parser.add_argument("images", nargs="*", type=Path, metavar="IMAGE", help="pictures to upscale")
    parser.add_argument("--upscaler", default=None, help="Lanczos, Nearest, or a network in ESRGAN/ (see --list)")
    parser.add_argument("--scale", type=float, default=None, help="factor, more than 0 and at most 8 (default 2)")
    parser.add_argument("-W", "--width", type=int, default=None, help="target width (with --height: cover, then crop)")
    parser.add_argument("-H", "--height", type=int, default=None, help="target height")
    parser.add_argument("--list", action="store_true", help="list the upscaler names and exit")
    parser.add_argument("-o", "--output-dir", dest="output_dir", type=Path, default=Path("outputs"))
    parser.add_argument("--tile", type=int, default=256, help="network tile side in input pixels (default 256)")
    parser.add_argument("--tile-overlap", dest="tile_overlap", type=int, default=32, help="pixels shared by neighbouring tiles")
    add_model_options(parser)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(run=run)


@dataclass(frozen=True)
class Source:
    """One input picture, checked before any network loads."""

    path: Path
    size: tuple[int, int]
    infotext: str | None
    recipe_json: str | None


def run(args: argparse.Namespace) -> int:
    import torch

    from brushwork.models.store import ModelStore
    from brushwork.upscale import TileSettings, find_upscaler, list_upscalers, plan_size

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    store = ModelStore(args.models_dir, device=device, allow_pickle=args.allow_pickle, allow_paths=True)
    if args.list:
        print("\n".join(list_upscalers(store)))
        return 0
    if not args.images:
        raise BrushworkError("give one or more pictures to upscale, e.g. brushwork upscale picture.png --upscaler Lanczos")
    if args.upscaler is None:
        raise BrushworkError(f"choose an upscaler with --upscaler: {', '.join(list_upscalers(store))}")
    if args.scale is not None and (args.width is not None or args.height is not None):
        raise BrushworkError("give either --scale or --width/--height, not both")
    tiles = TileSettings(size=args.tile, overlap=args.tile_overlap)
    upscaler = find_upscaler(args.upscaler, store)
    # Every picture and size is checked before the first (maybe long) upscale starts.
    sources = [_open_source(path) for path in args.images]
    scales = [_scale_for(source.size, args) for source in sources]
    for source, scale in zip(sources, scales):
        plan_size(source.size, scale)
    _upscale_all(sources, scales, upscaler, store, tiles, args)
    return 0


def _upscale_all(
    sources: list[Source], scales: list[Scale], upscaler: Upscaler, store: ModelStore, tiles: TileSettings,
    args: argparse.Namespace,
) -> None:
    from PIL import Image
    from tqdm import tqdm

    from brushwork.output import next_sequence_number, prompt_slug, save_png
    from brushwork.upscale import NetworkCache, add_postprocess_info, plan_size, postprocess_fields, upscale

    cache = NetworkCache(max_loaded=1)  # one network per run; it serves every picture
    for source, scale in zip(sources, scales):
        bar = None

        def on_tile(done: int, total: int) -> None:
            nonlocal bar
            if not args.progress or total < 2:
                return
            if bar is None or bar.total != total:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=total, unit="tile", desc=source.path.name, file=sys.stderr, dynamic_ncols=True)
            bar.n = done
            bar.refresh()

        try:
            with Image.open(source.path) as opened:
                opened.load()
                image = opened.copy()
        except OSError as error:  # a picture whose header read fine but whose pixels do not
            raise BrushworkError(f"cannot read {source.path}: {error}") from None
        try:
            result = upscale(image, upscaler, scale, store, cache=cache, tiles=tiles, progress=on_tile)
        finally:
            if bar is not None:
                bar.close()
        fields = postprocess_fields(upscaler.name, scale, plan_size(source.size, scale))
        folder = args.output_dir
        folder.mkdir(parents=True, exist_ok=True)
        slug = prompt_slug(source.path.stem)
        path = folder / (f"{next_sequence_number(folder):05d}" + (f"-{slug}" if slug else "") + ".png")
        save_png(result, path, infotext=add_postprocess_info(source.infotext, fields), recipe_json=source.recipe_json)
        print(path, flush=True)


def _open_source(path: Path) -> Source:
    """Size and infotext of a picture; BrushworkError for a missing file or one that is not a picture."""
    from PIL import Image, UnidentifiedImageError

    from brushwork.output import read_png_info

    if not path.is_file():
        raise BrushworkError(f"no such file: {path}" if not path.exists() else f"{path} is not a file")
    try:
        with Image.open(path) as image:
            size, image_format = image.size, image.format
    except UnidentifiedImageError:
        raise BrushworkError(f"{path} is not a picture Pillow can read (PNG, JPEG, WebP, ...)") from None
    except Image.DecompressionBombError as error:
        raise BrushworkError(f"{path} is too large to open safely: {error}") from None
    except OSError as error:
        raise BrushworkError(f"cannot read {path}: {error}") from None
    infotext = recipe_json = None
    if image_format in INFOTEXT_FORMATS:
        infotext, recipe_json = read_png_info(path)
    return Source(path, size, infotext, recipe_json)


def _scale_for(size: tuple[int, int], args: argparse.Namespace) -> Scale:
    """--scale, or the target --width/--height (one of them alone keeps the aspect ratio)."""
    width, height = args.width, args.height
    if width is None and height is None:
        return 2.0 if args.scale is None else args.scale
    if width is None:
        width = max(1, round(size[0] * height / size[1]))
    elif height is None:
        height = max(1, round(size[1] * width / size[0]))
    return (width, height)
