"""Training pictures as the community keeps them, and aspect-ratio buckets.

A folder of pictures, each with a same-named `.txt` caption, as kohya-ss/sd-scripts and A1111 read them:

    data/
      10_sks dog/           kohya's repeat folder: each picture counts 10 times; "sks dog" is the caption
        001.jpg 001.txt     of a picture without its own .txt
      metadata.jsonl        optional: {"file_name": "...", "text": "..."} lines (diffusers' ImageFolder;
                            "file" and "caption" as `brushwork data shapes` writes them)

Captions come from, in order: the picture's `.txt`, a `metadata.jsonl` entry, the repeat folder's name.
Pictures are never cropped to squares: each goes into the bucket (a width x height of about the training area,
multiples of 64) whose aspect ratio is nearest its own, is resized to cover it and centre-cropped by at most
the rounding, as kohya's bucketing does.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from brushwork.errors import BrushworkError

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_REPEAT_FOLDER = re.compile(r"^(\d+)_(.*)$")


@dataclass(frozen=True)
class Example:
    """One training picture: where it is, its caption, and how often an epoch shows it."""

    path: Path
    caption: str
    repeats: int = 1


def scan_folder(folder: Path, default_caption: str = "", exclude: Path | None = None) -> list[Example]:
    """Every picture below `folder` (but none below `exclude`: a ControlNet's control pictures) with its caption
    (sorted by path); a picture with no caption anywhere takes `default_caption`, and without one is an error
    naming it, so a run never learns an empty caption by accident."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise BrushworkError(f"training data folder not found: {folder}")
    listed = _metadata_captions(folder)
    examples, missing = [], []
    skipped = Path(exclude).expanduser().resolve() if exclude is not None else None
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES):
        if skipped is not None and path.resolve().is_relative_to(skipped):
            continue
        repeats, folder_caption = _repeat_folder(path, folder)
        text_file = path.with_suffix(".txt")
        if text_file.is_file():
            caption = text_file.read_text(encoding="utf-8", errors="replace").strip()
        else:
            caption = listed.get(path.relative_to(folder).as_posix(), folder_caption) or default_caption
        if not caption:
            missing.append(path.relative_to(folder).as_posix())
            continue
        examples.append(Example(path, caption, repeats))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise BrushworkError(f"{len(missing)} pictures have no caption: {shown}; add a same-named .txt, a "
                             "metadata.jsonl line, or put them in a kohya folder such as '10_sks dog'")
    if not examples:
        raise BrushworkError(f"no pictures in {folder} (looked for {', '.join(PICTURE_SUFFIXES)})")
    return examples


def _repeat_folder(path: Path, root: Path) -> tuple[int, str]:
    """kohya's `N_caption` folder nearest the picture: (N, caption); (1, "") for other folders."""
    for parent in path.parents:
        if parent == root or not parent.is_relative_to(root):
            break
        match = _REPEAT_FOLDER.match(parent.name)
        if match:
            return max(1, int(match[1])), match[2].strip()
    return 1, ""


def _metadata_captions(folder: Path) -> dict[str, str]:
    path = folder / "metadata.jsonl"
    if not path.is_file():
        return {}
    captions = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            name = entry.get("file_name", entry.get("file"))  # diffusers' ImageFolder; `brushwork data shapes`
            if name is None:
                raise KeyError("file_name")
            captions[str(name)] = str(entry.get("text") or entry.get("caption") or "")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BrushworkError(f"{path}:{number}: expected a JSON object with file_name and text") from None
    return captions


def make_buckets(resolution: int, *, step: int = 64, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) pairs of at most resolution² pixels, sides multiples of `step`, aspect ratios up to
    `max_ratio` either way: kohya's bucket list for that training resolution."""
    if resolution < step or resolution % step:
        raise BrushworkError(f"--resolution must be a multiple of {step}, at least {step} (got {resolution})")
    area = resolution * resolution
    buckets = set()
    width = step
    while width <= resolution * max_ratio:
        height = min(area // width // step * step, int(resolution * max_ratio) // step * step)
        if height >= step and max(width / height, height / width) <= max_ratio:
            buckets.add((width, height))
        width += step
    return sorted(buckets, key=lambda size: (size[0] / size[1], size[0]))


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the picture's (in log ratio, so 2:1 and 1:2 weigh alike); of
    those, the largest."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda bucket: (round(abs(math.log(bucket[0] / bucket[1]) - ratio), 6), -bucket[0] * bucket[1]))


def fit_to_bucket(image, bucket: tuple[int, int]):
    """The picture resized to cover the bucket, then centre-cropped to it (only the rounding is cut away)."""
    from PIL import Image

    width, height = bucket
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           Image.Resampling.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))
