"""Procedurally drawn pictures of coloured shapes, with captions, and a parser for those captions.

The pictures train brushwork's tiny text-to-image model and are the ground truth its judge
(`brushwork.shapes.checker`) is measured against. Everything is deterministic: `sample_scene` draws only
from the numpy Generator it is given, `render` is a pure function of the scene, and `make_dataset`
writes byte-identical files for the same seed. Scene geometry is stored as fractions of the image side,
so one scene renders at any size.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
T = TypeVar("T")

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
# Shapes the embedded model never saw: drawn only for the "novel" split, so fine-tuning (LoRA, DreamBooth,
# textual inversion) has a concept to teach that the checker can still recognise.
NOVEL_SHAPES: tuple[str, ...] = ("heart", "diamond")
PLURALS: dict[str, str] = {s: ("crosses" if s == "cross" else s + "s") for s in SHAPES + NOVEL_SHAPES}

# Object colours: saturated hues spread round the wheel plus white and black. The closest pair
# (orange/yellow) is still ~85 RGB units apart, so the checker's nearest-reference lookup cannot mix them up.
COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30), "orange": (255, 140, 0), "yellow": (250, 220, 20), "green": (30, 160, 50),
    "cyan": (0, 200, 220), "blue": (30, 60, 220), "purple": (130, 40, 180), "pink": (255, 120, 190),
    "white": (245, 245, 245), "black": (20, 20, 20),
}
# Every colour a picture can contain. Grey is a background-only colour.
PALETTE: dict[str, RGB] = {**COLOURS, "grey": (128, 128, 128)}
# A colour the embedded model never saw, drawn only when asked for (`sample_scene(..., colour="brown")`), so
# fine-tuning has a new colour word to teach. It sits >= 46 CIELAB units from every PALETTE colour (their
# closest pair: 28), so the checker, which knows it, does not confuse it with them.
NOVEL_COLOURS: dict[str, RGB] = {"brown": (140, 80, 30)}
# Every colour the checker and the prompt parser name.
COLOUR_NAMES: dict[str, RGB] = {**PALETTE, **NOVEL_COLOURS}

# Colour/shape pairs the training sampler never draws, so evaluation can test compositional generalisation.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("orange", "star"), ("cyan", "cross"), ("pink", "square"), ("yellow", "circle")}
)

# Named regions of a 3x3 grid (thirds of the image), row-major, so index = row * 3 + column.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right",
)
# Circumradius ranges as fractions of the image side. The gap between them lets the checker split
# small from large at SIZE_SPLIT; small is still ~6.5 px at 64x64 so a star keeps ~3 px wide arms.
SIZES: dict[str, tuple[float, float]] = {"small": (0.10, 0.12), "large": (0.17, 0.19)}
SIZE_SPLIT = 0.145
MARGIN = 0.05  # clear border (fraction of side) so the checker can read the background from the edge
GAP = 0.06  # minimum clear space between objects, so antialiased edges never join two objects
STAR_INNER = 0.45  # inner/outer radius of the 5-point star
SUPERSAMPLE = 4

# "train" never draws a HELD_OUT pair, "heldout" only those, "all" any of SHAPES, "novel" only NOVEL_SHAPES.
Split = Literal["train", "heldout", "all", "novel"]


@dataclass(frozen=True)
class Expectation:
    """What a prompt asks for; None means the prompt does not say."""

    colour: str | None = None
    shape: str | None = None
    count: int | None = None
    position: str | None = None
    background: str | None = None
    size: str | None = None


@dataclass
class ShapeObject:
    """One drawn object; centre (x, y) and circumradius are fractions of the image side."""

    shape: str
    colour: str
    size: str
    position: str
    centre: tuple[float, float]
    radius: float
    rotation: float  # degrees, counter-clockwise


@dataclass
class Background:
    """A plain background (one colour) or a two-tone one split at `split_at` (fraction of the side)."""

    colours: tuple[str, ...]
    split: str | None = None  # "horizontal": top/bottom halves; "vertical": left/right halves
    split_at: float = 0.5


@dataclass
class Scene:
    """A picture to draw, and its caption. `mentions` lists the Expectation fields the caption states."""

    objects: list[ShapeObject]
    background: Background
    caption: str
    mentions: tuple[str, ...]

    @property
    def count(self) -> int:
        """Number of objects (all share one colour and shape)."""
        return len(self.objects)

    def truth(self) -> Expectation:
        """Everything the picture shows; position only for a single object, background only when plain."""
        first = self.objects[0]
        return Expectation(
            colour=first.colour, shape=first.shape, count=self.count,
            position=first.position if self.count == 1 else None,
            background=self.background.colours[0] if self.background.split is None else None,
            size=first.size,
        )

    def expectation(self) -> Expectation:
        """The truth restricted to what the caption states: what `parse_prompt(caption)` must return."""
        truth = asdict(self.truth())
        return Expectation(**{k: (v if k in self.mentions else None) for k, v in truth.items()})


def region_of(x: float, y: float) -> str:
    """Named 3x3 region containing the point (x, y), given as fractions of the image side."""
    col, row = (min(max(int(v * 3), 0), 2) for v in (x, y))
    return POSITIONS[row * 3 + col]


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    # Index rather than rng.choice, so strings stay plain `str` (numpy would hand back np.str_).
    return options[int(rng.integers(len(options)))]


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    # Rounded so the metadata holds exactly the numbers that were rendered.
    return round(float(rng.uniform(low, high)), 4)


def _pick_pair(rng: np.random.Generator, split: Split, shape: str | None, colour: str | None) -> tuple[str, str]:
    if colour is not None:
        if colour not in COLOURS and colour not in NOVEL_COLOURS:
            raise ValueError(f"unknown object colour {colour!r}; expected one of {', '.join([*COLOURS, *NOVEL_COLOURS])}")
        if split == "heldout":
            raise ValueError("the 'heldout' split fixes its colours; ask for a colour of another split")
        while True:  # the split's shape, in the asked colour (a "train" pair never HELD_OUT)
            pair = (colour, shape if shape is not None else _pick_pair(rng, split, None, None)[1])
            if split != "train" or pair not in HELD_OUT:
                return pair
    if shape is not None:
        if shape not in (NOVEL_SHAPES if split == "novel" else SHAPES):
            raise ValueError(f"the {split!r} split draws no {shape!r}")
        if split == "heldout":
            return _pick(rng, sorted(colour for colour, held in HELD_OUT if held == shape)), shape
        while True:
            pair = (_pick(rng, list(COLOURS)), shape)
            if split in ("all", "novel") or pair not in HELD_OUT:
                return pair
    if split == "heldout":
        return _pick(rng, sorted(HELD_OUT))
    if split == "novel":
        return _pick(rng, list(COLOURS)), _pick(rng, NOVEL_SHAPES)
    while True:
        pair = (_pick(rng, list(COLOURS)), _pick(rng, SHAPES))
        if split == "all" or pair not in HELD_OUT:
            return pair


def _place_single(rng: np.random.Generator, radius: float) -> tuple[float, float]:
    # Near the centre of a random ninth, pulled in from the edge by the radius; the thirds' boundaries stay
    # >= 5 px away at 64x64 even for a large object, so the region is unambiguous.
    index = int(rng.integers(9))
    coords = []
    for cell in (index % 3, index // 3):
        base = (0.2, 0.5, 0.8)[cell] + rng.uniform(-0.04, 0.04)
        coords.append(round(float(np.clip(base, radius + MARGIN, 1 - radius - MARGIN)), 4))
    return coords[0], coords[1]


def _place_many(rng: np.random.Generator, radii: list[float]) -> list[tuple[float, float]] | None:
    # Rejection sampling: uniform centres, kept only when no two objects come within GAP of each other.
    for _ in range(200):
        centres = [(_uniform(rng, r + MARGIN, 1 - r - MARGIN), _uniform(rng, r + MARGIN, 1 - r - MARGIN))
                   for r in radii]
        if all(math.dist(centres[i], centres[j]) >= radii[i] + radii[j] + GAP
               for i in range(len(radii)) for j in range(i)):
            return centres
    return None


def sample_scene(rng: np.random.Generator, split: Split = "train", shape: str | None = None,
                 colour: str | None = None) -> Scene:
    """Draw a random scene. `split="train"` never yields a HELD_OUT colour/shape pair; "heldout" only those;
    "novel" only NOVEL_SHAPES. `shape` restricts it to that one of the split's shapes; `colour` paints its
    objects that colour (one of COLOURS or NOVEL_COLOURS)."""
    colour, shape = _pick_pair(rng, split, shape, colour)
    count = _pick(rng, (1, 1, 1, 2, 2, 3))
    size = _pick(rng, ("small", "large"))
    others = [c for c in PALETTE if c != colour]  # never an object on its own colour
    if rng.random() < 0.7:
        background = Background((_pick(rng, others),))
    else:
        first = _pick(rng, others)
        second = _pick(rng, [c for c in others if c != first])
        background = Background((first, second), _pick(rng, ("horizontal", "vertical")), _uniform(rng, 0.35, 0.65))
    while True:
        radii = [_uniform(rng, *SIZES[size]) for _ in range(count)]
        centres = [_place_single(rng, radii[0])] if count == 1 else _place_many(rng, radii)
        if centres is not None:
            break
        size = "small"  # several large objects may not fit; small ones always do
    objects = [
        ShapeObject(shape, colour, size, region_of(*c), c, r, 0.0 if shape == "circle" else _uniform(rng, -12, 12))
        for c, r in zip(centres, radii)
    ]
    scene = Scene(objects, background, "", ())
    scene.caption, scene.mentions = _caption(rng, scene)
    return scene


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _position_phrase(rng: np.random.Generator, position: str) -> str:
    if position == "centre":
        return _pick(rng, ("in the centre", "in the middle", "in the center", "centred"))
    if " " in position:
        hyphenated = position.replace(" ", "-")
        return _pick(rng, (f"in the {position} corner", f"in the {hyphenated} corner", f"at the {position}"))
    if position in ("top", "bottom"):
        return _pick(rng, (f"at the {position}", f"near the {position}"))
    return _pick(rng, (f"on the {position}", f"on the {position} side", f"at the {position}"))


def _caption(rng: np.random.Generator, scene: Scene) -> tuple[str, tuple[str, ...]]:
    """A caption in one of several phrasings, and which facts it states."""
    first, count = scene.objects[0], scene.count
    say_size = rng.random() < 0.4
    say_position = count == 1 and rng.random() < 0.6
    say_background = scene.background.split is None and rng.random() < 0.6
    bg = scene.background.colours[0]
    adjectives = (f"{first.size} " if say_size else "") + first.colour
    if count == 1:
        noun_phrase = _pick(rng, (_with_article(f"{adjectives} {first.shape}"), f"one {adjectives} {first.shape}",
                                  f"a single {adjectives} {first.shape}"))
        terse = f"{adjectives} {first.shape}"
    else:
        numbers = ("two", "2", "a pair of") if count == 2 else ("three", "3")
        noun_phrase = terse = f"{_pick(rng, numbers)} {adjectives} {PLURALS[first.shape]}"
    where = f" {_position_phrase(rng, first.position)}" if say_position else ""
    style = int(rng.integers(5))
    if style == 0:  # "red circle, top left, blue background"
        parts = [terse] + ([first.position] if say_position else []) + ([f"{bg} background"] if say_background else [])
        caption = ", ".join(parts)
    elif style == 1 and say_background:  # "a blue background with a red circle on the left"
        caption = f"{_with_article(bg)} background with {noun_phrase}{where}"
    else:  # "a picture of a red circle in the centre on a blue background"
        lead = _pick(rng, ("", "", "a picture of ", "an image of ", "a drawing of "))
        on = _pick(rng, ("on", "against", "with")) if say_background else ""
        caption = f"{lead}{noun_phrase}{where}" + (f" {on} {_with_article(bg)} background" if say_background else "")
    mentions = ("colour", "shape", "count") + (("size",) if say_size else ()) + (("position",) if say_position else ())
    return caption, mentions + (("background",) if say_background else ())


def _heart_outline(points: int = 96) -> list[tuple[float, float]]:
    """The classic parametric heart (x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t), point down,
    centred on its smallest enclosing circle's centre and scaled to unit circumradius, as (rho, angle) pairs."""
    ts = [2 * math.pi * k / points for k in range(points)]
    xy = [(16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
          for t in ts]
    xs, ys = [x for x, _ in xy], [y for _, y in xy]
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    reach = max(math.hypot(x - cx, y - cy) for x, y in xy)
    return [(math.hypot(x - cx, y - cy) / reach, math.atan2(y - cy, x - cx)) for x, y in xy]


_HEART = _heart_outline()


def _polygon(obj: ShapeObject, side: float) -> list[tuple[float, float]]:
    """Outline of `obj` in pixel coordinates of a `side`-pixel canvas (y down, shapes point up)."""
    if obj.shape == "circle":
        polar = [(1.0, 2 * math.pi * k / 128) for k in range(128)]
    elif obj.shape == "square":
        polar = [(1.0, math.pi / 4 + math.pi / 2 * k) for k in range(4)]
    elif obj.shape == "triangle":
        polar = [(1.0, -math.pi / 2 + 2 * math.pi / 3 * k) for k in range(3)]
    elif obj.shape == "star":
        polar = [(1.0 if k % 2 == 0 else STAR_INNER, -math.pi / 2 + math.pi / 5 * k) for k in range(10)]
    elif obj.shape == "cross":
        # A plus with arms a third of its span wide; half-span a is scaled so the arm corners sit on the circumradius.
        a, w = 1 / math.hypot(1, 1 / 3), 1 / (3 * math.hypot(1, 1 / 3))
        quarter = [(w, -a), (w, -w), (a, -w)]  # one quarter of the outline; the rest by rotating it
        points = [(x * c - y * s, x * s + y * c) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1)) for x, y in quarter]
        polar = [(math.hypot(x, y), math.atan2(y, x)) for x, y in points]
    elif obj.shape == "heart":
        polar = _HEART
    elif obj.shape == "diamond":  # a square standing on a corner: its 4-fold outline turned by 45 degrees
        polar = [(1.0, math.pi / 2 * k) for k in range(4)]
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {', '.join(SHAPES + NOVEL_SHAPES)}")
    turn = -math.radians(obj.rotation)  # counter-clockwise on screen, where y points down
    cx, cy, r = obj.centre[0] * side, obj.centre[1] * side, obj.radius * side
    return [(cx + r * rho * math.cos(t + turn), cy + r * rho * math.sin(t + turn)) for rho, t in polar]


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw `scene` as a size x size RGB image: drawn SUPERSAMPLE times larger, then box-filtered down."""
    big = size * SUPERSAMPLE
    colours = scene.background.colours
    image = Image.new("RGB", (big, big), PALETTE[colours[0]])
    draw = ImageDraw.Draw(image)
    if scene.background.split is not None:
        # Cut on a whole output pixel, so the two-tone edge stays crisp after downsampling.
        cut = round(scene.background.split_at * size) * SUPERSAMPLE
        box = (cut, 0, big, big) if scene.background.split == "vertical" else (0, cut, big, big)
        draw.rectangle(box, fill=PALETTE[colours[1]])
    for obj in scene.objects:
        draw.polygon(_polygon(obj, big), fill=COLOUR_NAMES[obj.colour])
    # Box filtering averages each 4x4 block: exact-coverage antialiasing with no ringing or colour overshoot.
    return image.resize((size, size), Image.Resampling.BOX)


CONDITIONS = ("canny", "mask", "scribble")


def render_condition(scene: Scene, picture: Image.Image, kind: str) -> Image.Image:
    """A ControlNet's control picture of `scene` (drawn as `picture`): "canny", the canny preprocessor's edges
    of the picture (as a user's canny unit makes them); "mask", the objects white on black; "scribble", their
    outlines drawn as a thick white line on black, as a hand would."""
    size = picture.size[0]
    if kind == "canny":
        from brushwork.control.preprocessors import preprocess

        return preprocess("canny", picture, resolution=size)
    if kind not in CONDITIONS:
        raise ValueError(f"unknown condition {kind!r}; expected one of {', '.join(CONDITIONS)}")
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), "black")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        outline = _polygon(obj, big)
        if kind == "mask":
            draw.polygon(outline, fill="white")
        else:
            draw.line([*outline, outline[0]], fill="white", width=max(1, big // 32), joint="curve")
    return image.resize((size, size), Image.Resampling.BOX)


def make_dataset(out_dir: str | Path, count: int, seed: int, size: int = 64, split: Split = "train",
                 shape: str | None = None, colour: str | None = None, condition: str | None = None) -> list[Scene]:
    """Write `count` pictures as 00000.png + 00000.txt (caption) and metadata.jsonl; same seed, same bytes. With
    a `condition` (CONDITIONS), each picture's control picture too, as conditioning/00000.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if condition is not None:
        (out / "conditioning").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes = []
    with open(out / "metadata.jsonl", "w", encoding="utf-8", newline="\n") as meta:
        for i in range(count):
            scene = sample_scene(rng, split, shape, colour)
            picture = render(scene, size)
            picture.save(out / f"{i:05d}.png", format="PNG")
            if condition is not None:
                render_condition(scene, picture, condition).save(out / "conditioning" / f"{i:05d}.png", format="PNG")
            (out / f"{i:05d}.txt").write_text(scene.caption, encoding="utf-8")
            meta.write(json.dumps({"file": f"{i:05d}.png", **asdict(scene)}, sort_keys=True) + "\n")
            scenes.append(scene)
    return scenes


# --- Prompt parsing -----------------------------------------------------------------------------------

_SYNONYMS = {
    "gray": "grey", "center": "centre", "middle": "centre", "centred": "centre", "centered": "centre",
    "upper": "top", "lower": "bottom", "big": "large", "tiny": "small", "violet": "purple",
    "disc": "circle", "disk": "circle", "dot": "circle", "plus": "cross", "backdrop": "background",
}
_SHAPE_WORDS = {**{s: s for s in SHAPES + NOVEL_SHAPES}, **{p: s for s, p in PLURALS.items()},
                "discs": "circle", "dots": "circle"}
_NUMBERS = {"a": 1, "an": 1, "one": 1, "single": 1, "1": 1, "two": 2, "pair": 2, "2": 2, "three": 3, "3": 3,
            "four": 4, "4": 4, "five": 5, "5": 5}
_SIZE_WORDS = ("small", "large")


def parse_prompt(text: str) -> Expectation:
    """Read colour, shape, count, position, background colour and size from a caption or simple prompt."""
    words = [_SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+|\d+", text.lower())]
    background_at = None
    if "background" in words:
        i = words.index("background")
        before = [j for j in range(i - 1, max(i - 3, -1), -1) if words[j] in COLOUR_NAMES]
        after = [j for j in range(i + 1, min(i + 3, len(words))) if words[j] in COLOUR_NAMES]
        found = before[:1] or after[:1]  # "a blue background", else "background is blue"
        background_at = found[0] if found else None
    colour = next((w for j, w in enumerate(words) if w in COLOUR_NAMES and j != background_at), None)
    shape_at = next((j for j, w in enumerate(words) if w in _SHAPE_WORDS), None)
    shape = _SHAPE_WORDS[words[shape_at]] if shape_at is not None else None
    count = None
    if shape_at is not None:
        # The number sits before the noun, past its adjectives: "two small red squares", "a pair of stars".
        j = shape_at - 1
        while j >= 0 and (words[j] in COLOUR_NAMES or words[j] in _SIZE_WORDS or words[j] == "of"):
            j -= 1
        if j >= 0 and words[j] in _NUMBERS:
            count = _NUMBERS[words[j]]
        elif words[shape_at] in SHAPES + NOVEL_SHAPES:
            count = 1  # a bare singular noun: "red circle, blue background"
    size = next((w for w in words if w in _SIZE_WORDS), None)
    vertical = next((w for w in words if w in ("top", "bottom")), None)
    horizontal = next((w for w in words if w in ("left", "right")), None)
    if vertical and horizontal:
        position: str | None = f"{vertical} {horizontal}"
    else:
        position = vertical or horizontal or ("centre" if "centre" in words else None)
    background = words[background_at] if background_at is not None else None
    return Expectation(colour=colour, shape=shape, count=count, position=position, background=background, size=size)
