"""Data curation before training: which pictures to leave out, and why. Nothing is deleted.

Checks, each on the picture as it is on disk:

- too small: the shorter side is below `min_side` (default: half the training resolution);
- blurry: the picture's sharpest edges rise too slowly for their contrast (`edge_sharpness` below
  `blur_threshold`). Not the plain variance of the Laplacian: on flat drawn pictures with one small shape it
  is as low for crisp pictures as for blurred ones (measured on 60 drawn pictures: crisp down to 0.1, blurred up
  to 6.0), while edge sharpness separates them (crisp ≥ 0.47, blurred with σ 1.5 ≤ 0.25, on 80);
- near-duplicate: the 64-bit perceptual hash (DCT of the 32x32 grey picture, the signs of its 8x8 lowest
  frequencies against their median) is within `duplicate_distance` bits of an earlier picture's; the earlier
  one (by path) is kept;
- watermark or overlaid text: in a corner box (a quarter of the width, a fifth of the height) the Canny edges
  enclose at least `text_holes` small regions (letters' counters, gaps between strokes) at an edge density of at
  least `text_density` (measured on 200 drawn pictures: clean corners ≤ 1 region and ≤ 0.06, a small "© stock"
  ≥ 4 and ≥ 0.13). A heuristic, said so in the report: a busy texture in a corner can trip it;
- low aesthetic score: below `min_aesthetic` by LAION's improved aesthetic predictor (train/aesthetic.py), when
  the user has placed it in the models folder's `aesthetic/`; otherwise the report says the filter is off.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from brushwork.train.aesthetic import AESTHETIC_FOLDER, AestheticScorer
from brushwork.train.dataset import Example, make_buckets, nearest_bucket

WORKING_SIDE = 512  # larger pictures are tested at this longer side (so thresholds do not depend on file size)


@dataclass(frozen=True)
class CurationSettings:
    resolution: int = 512
    min_side: int | None = None  # None: half the resolution
    blur_threshold: float = 0.33
    duplicate_distance: int = 6
    text_holes: int = 3
    text_density: float = 0.09
    min_aesthetic: float = 5.0  # LAION predictor's 1-10 scale; used only when a predictor is given


@dataclass
class Dropped:
    path: str
    reasons: list[str]


@dataclass
class CurationReport:
    folder: str
    settings: dict
    kept: list[str] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    buckets: dict[str, int] = field(default_factory=dict)  # "WxH" -> pictures kept in it
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def to_text(self) -> str:
        lines = [f"{self.folder}: {len(self.kept)} pictures kept, {len(self.dropped)} left out"]
        lines += [f"  left out {item.path}: {'; '.join(item.reasons)}" for item in self.dropped]
        lines.append("buckets: " + (", ".join(f"{size} x{count}" for size, count in self.buckets.items()) or "none"))
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def curate(examples: list[Example], folder: Path, settings: CurationSettings = CurationSettings(),
           aesthetic: AestheticScorer | None = None) -> CurationReport:
    """Check every picture; the report lists those kept (with their bucket) and those left out, with reasons."""
    report = CurationReport(str(folder), asdict(settings))
    min_side = settings.min_side or settings.resolution // 2
    buckets = make_buckets(settings.resolution)
    if aesthetic is None:
        report.notes.append(f"the aesthetic filter is off: place LAION's improved aesthetic predictor (the MLP and a "
                            f"CLIP ViT-L/14 folder) in the models folder's {AESTHETIC_FOLDER}/ to use it")
    else:
        report.notes.append(f"the aesthetic filter is on: {aesthetic.name}, pictures scoring under "
                            f"{settings.min_aesthetic:g} are left out")
    report.notes.append("the watermark test looks for letter-like edges in the corners: a busy texture there can "
                        "be taken for text; check the pictures it lists")
    seen: list[tuple[int, str]] = []
    for example in examples:
        name = example.path.relative_to(folder).as_posix()
        try:
            with Image.open(example.path) as opened:
                picture = opened.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            report.dropped.append(Dropped(name, [f"unreadable picture: {error}"]))
            continue
        grey = cv2.cvtColor(np.asarray(picture), cv2.COLOR_RGB2GRAY)
        reasons = []
        if min(picture.size) < min_side:
            reasons.append(f"too small: {picture.width}x{picture.height}, the shorter side under {min_side}")
        sharpness = edge_sharpness(grey)
        if sharpness is not None and sharpness < settings.blur_threshold:
            reasons.append(f"blurry: edge sharpness {sharpness:.2f} < {settings.blur_threshold:g}")
        digest = perceptual_hash(grey)
        twin = next((other for other_hash, other in seen if hamming(digest, other_hash) <= settings.duplicate_distance),
                    None)
        if twin is not None:
            reasons.append(f"near-duplicate of {twin}")
        density, holes = corner_text(grey)
        if holes >= settings.text_holes and density >= settings.text_density:
            reasons.append(f"likely watermark or text in a corner: {holes} small enclosed regions, "
                           f"edge density {density:.2f}")
        if aesthetic is not None:
            score = aesthetic.score([picture])[0]
            if score < settings.min_aesthetic:
                reasons.append(f"low aesthetic score: {score:.2f} < {settings.min_aesthetic:g}")
        if reasons:
            report.dropped.append(Dropped(name, reasons))
            continue
        seen.append((digest, name))
        report.kept.append(name)
        bucket = nearest_bucket(picture.size, buckets)
        key = f"{bucket[0]}x{bucket[1]}"
        report.buckets[key] = report.buckets.get(key, 0) + 1
    return report


def edge_sharpness(grey: np.ndarray) -> float | None:
    """How steep the picture's sharpest edges are for their contrast: the 90th percentile, over pixels whose 7x7
    neighbourhood spans at least 24 grey levels, of gradient magnitude / that span. A crisp edge steps within
    a pixel or two (about 0.5), a blurred one spreads over several (0.25 and less). None: no edge to judge."""
    scale = min(1.0, WORKING_SIDE / max(grey.shape))
    working = grey if scale == 1 else cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    working = working.astype(np.float32)
    gx = cv2.Sobel(working, cv2.CV_32F, 1, 0, ksize=3) / 8  # levels per pixel
    gy = cv2.Sobel(working, cv2.CV_32F, 0, 1, ksize=3) / 8
    kernel = np.ones((7, 7), np.uint8)
    span = cv2.dilate(working, kernel) - cv2.erode(working, kernel)
    edges = span >= 24
    if edges.sum() < 20:
        return None
    return float(np.percentile(np.sqrt(gx * gx + gy * gy)[edges] / span[edges], 90))


def perceptual_hash(grey: np.ndarray) -> int:
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term is left out of the median, as pHash does
    return int("".join("1" if bit else "0" for bit in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def corner_text(grey: np.ndarray) -> tuple[float, int]:
    """(edge density, small enclosed regions) of the busiest corner box: text leaves many edges and many small
    regions enclosed by them (letters' counters, the gaps between strokes); a shape's outline leaves one."""
    scale = min(1.0, WORKING_SIDE / max(grey.shape))
    working = grey if scale == 1 else cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    height, width = working.shape
    box_w, box_h = max(8, width // 4), max(8, height // 5)
    edges = cv2.Canny(working, 80, 200) > 0
    busiest = (0.0, 0)
    for top in (0, height - box_h):
        for left in (0, width - box_w):
            box = edges[top: top + box_h, left: left + box_w]
            _, _, stats, _ = cv2.connectedComponentsWithStats((~box).astype(np.uint8), connectivity=4)
            holes = int((stats[1:, cv2.CC_STAT_AREA] <= box.size // 20).sum())
            busiest = max(busiest, (float(box.mean()), holes), key=lambda found: (found[1], found[0]))
    return busiest
