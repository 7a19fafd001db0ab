"""How often a model's pictures show what their prompts asked for, judged by the shapes checker.

Prompts are captions drawn by the shapes drawer from fixed seeds: the "train" split uses only colour/shape
pairs the training sampler draws, "heldout" only the pairs it never draws (compositional generalisation), "novel" only shapes the embedded
model never saw (what fine-tuning teaches).
Each prompt is painted with `seeds` consecutive seeds by the Engine - one Recipe per prompt with
batch_size = seeds - and every picture is scored with `brushwork.shapes.check` on the attributes its
prompt states. The picture source is injectable, so the scoring can be checked on the drawings themselves.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from brushwork.shapes import Expectation, check, sample_scene
from brushwork.shapes.draw import Scene

SPLITS = ("train", "heldout", "novel")
# The prompts' own seeds, apart from any data set's (`brushwork data shapes` defaults to seed 0).
PROMPT_SEEDS = {"train": 1_000_001, "heldout": 1_000_002, "novel": 1_000_003}
ATTRIBUTES = ("colour", "shape", "colour+shape", "position", "count", "size", "background", "all")


@dataclass(frozen=True)
class EvalPrompt:
    prompt: str
    expectation: Expectation  # what the prompt states, as parse_prompt reads it
    split: str
    scene: Scene  # the drawing the caption was written for


ImageSource = Callable[[EvalPrompt, list[int]], list[Image.Image]]


def eval_prompts(count: int, split: str, shape: str | None = None, colour: str | None = None) -> list[EvalPrompt]:
    """`count` prompts of `split` (of its `shape` alone, in `colour` alone, if given); the same arguments, the
    same prompts."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    rng = np.random.default_rng(PROMPT_SEEDS[split])
    prompts = []
    for _ in range(count):
        scene = sample_scene(rng, split, shape, colour)
        prompts.append(EvalPrompt(scene.caption, scene.expectation(), split, scene))
    return prompts


@dataclass
class Score:
    """Hits and how often each attribute was asked about, for one split at one CFG scale."""

    split: str
    cfg_scale: float
    images: int = 0
    hits: dict[str, int] = field(default_factory=lambda: {a: 0 for a in ATTRIBUTES})
    asked: dict[str, int] = field(default_factory=lambda: {a: 0 for a in ATTRIBUTES})

    def add(self, verdicts: dict[str, bool | None]) -> None:
        self.images += 1
        for name, verdict in verdicts.items():
            if verdict is not None:
                self.asked[name] += 1
                self.hits[name] += int(verdict)

    def accuracy(self) -> dict[str, float | None]:
        return {a: (self.hits[a] / self.asked[a] if self.asked[a] else None) for a in ATTRIBUTES}

    def to_dict(self) -> dict:
        return {"split": self.split, "cfg_scale": self.cfg_scale, "images": self.images,
                "accuracy": self.accuracy(), "asked": dict(self.asked)}


def verdicts(image: Image.Image, expectation: Expectation) -> dict[str, bool | None]:
    """Per-attribute verdicts of one picture; colour+shape holds when both do, all when every asked one does."""
    result = check(image, expectation)
    return {
        "colour": result.colour_ok,
        "shape": result.shape_ok,
        "colour+shape": None if result.colour_ok is None or result.shape_ok is None else result.colour_ok and result.shape_ok,
        "position": result.position_ok,
        "count": result.count_ok,
        "size": result.size_ok,
        "background": result.background_ok,
        "all": result.passed,
    }


def score(prompts: Sequence[EvalPrompt], source: ImageSource, seeds: Sequence[int], cfg_scale: float,
          progress: Callable[[int], None] | None = None) -> Score:
    """Paint every prompt with every seed through `source` and judge each picture."""
    result = Score(split=prompts[0].split if prompts else "", cfg_scale=cfg_scale)
    for done, item in enumerate(prompts, 1):
        images = source(item, list(seeds))
        if len(images) != len(seeds):
            raise RuntimeError(f"the picture source gave {len(images)} pictures for {len(seeds)} seeds")
        for image in images:
            result.add(verdicts(image, item.expectation))
        if progress is not None:
            progress(done)
    return result


def engine_source(model: str | Path, *, steps: int, cfg_scale: float, sampler: str | None = None,
                  store=None, loras: Sequence = ()) -> ImageSource:
    """Pictures made by `Engine.run` from a checkpoint: one Recipe per prompt, batch_size = number of seeds.
    `loras` (LoraUse items, files in the store's Lora/ folder) apply to every picture."""
    from brushwork.engine.engine import Engine
    from brushwork.models.store import ModelStore
    from brushwork.recipe import Recipe

    engine = Engine(store or ModelStore(allow_paths=True))
    extra = {"sampler": sampler} if sampler else {}
    if loras:
        extra["loras"] = list(loras)

    def paint(item: EvalPrompt, seeds: list[int]) -> list[Image.Image]:
        if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
            raise ValueError("the Engine paints consecutive seeds; pass seeds as a range")
        recipe = Recipe(prompt=item.prompt, model=str(model), seed=seeds[0], batch_size=len(seeds), steps=steps,
                        cfg_scale=cfg_scale, **extra)
        return [generated.image for generated in engine.run(recipe).images]

    return paint


def image_latency(model: str | Path, *, steps: int, cfg_scale: float, repeats: int = 3, store=None) -> float:
    """Median seconds for one picture (batch 1) through the Engine, after a warm-up run."""
    from brushwork.engine.engine import Engine
    from brushwork.models.store import ModelStore
    from brushwork.recipe import Recipe

    engine = Engine(store or ModelStore(allow_paths=True))
    recipe = Recipe(prompt="a red circle on a blue background", model=str(model), seed=0, steps=steps, cfg_scale=cfg_scale)
    engine.run(recipe)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.run(recipe)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def format_table(scores: Sequence[Score]) -> str:
    """A fixed-width table: one row per (split, CFG), one column per attribute (n = times asked)."""
    header = f"{'split':<8} {'cfg':>5} {'images':>6}  " + "  ".join(f"{a:>12}" for a in ATTRIBUTES)
    lines = [header, "-" * len(header)]
    for s in scores:
        cells = []
        for a in ATTRIBUTES:
            acc = s.accuracy()[a]
            cells.append(f"{'-':>12}" if acc is None else f"{acc:>6.1%} n={s.asked[a]:<3}".rjust(12))
        lines.append(f"{s.split:<8} {s.cfg_scale:>5g} {s.images:>6}  " + "  ".join(cells))
    return "\n".join(lines)
