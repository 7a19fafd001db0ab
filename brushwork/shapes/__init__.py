"""Coloured-shape pictures: a deterministic drawer with captions (`draw`) and a classic-CV judge (`checker`).

The drawings train brushwork's tiny from-scratch text-to-image model; the checker scores whether a picture
shows what its prompt asked for (colour, shape, count, position, size, background).
"""

from .checker import CheckResult, DetectedObject, check, detect, measure_accuracy
from .draw import (
    COLOURS, HELD_OUT, NOVEL_COLOURS, NOVEL_SHAPES, PALETTE, POSITIONS, SHAPES, Background, Expectation, Scene, ShapeObject,
    make_dataset, parse_prompt, render, sample_scene,
)

__all__ = [
    "COLOURS", "HELD_OUT", "NOVEL_COLOURS", "NOVEL_SHAPES", "PALETTE", "POSITIONS", "SHAPES", "Background", "CheckResult", "DetectedObject",
    "Expectation", "Scene", "ShapeObject", "check", "detect", "make_dataset", "measure_accuracy",
    "parse_prompt", "render", "sample_scene",
]
