"""ControlNet proof on the embedded model: does the shipped canny ControlNet put the object where its edges are?

    python bench/controlnet_proof.py                        # 50 layouts, ~5 min on 2 CPU cores
    python bench/controlnet_proof.py --layouts 100 --controlnet /tmp/canny.safetensors

For each layout (one red circle of the drawer's sizes and places, on a plain background) the circle's edge map
(the canny preprocessor on its drawing) is the unit's picture, and "a red circle" is painted (Euler, 20 steps,
CFG 7, 64x64, seed = layout number) with the unit and without it. The score is the IoU of the painted
foreground (the shapes checker's background model) with the drawn circle. Also: weight 0 against no unit
(pixel-identical?), guidance end 0.3 against 1.0, two units with one circle's edges each ("two red circles":
both circles covered), and diffusers' StableDiffusionControlNetPipeline on the same weights and seeds as the
peer (its IoU, and the largest pixel difference from brushwork's pictures).

Prints one JSON object and writes it to --out if given.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

SHIPPED = "brushwork-shapes-canny"
PROMPT, PAIR_PROMPT = "a red circle", "two red circles"
STEPS, CFG, SIZE = 20, 7.0, 64


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def layouts(count: int, objects: int, seed: int) -> list:
    """`count` scenes of `objects` red circles on a one-colour background."""
    from brushwork.shapes import sample_scene

    rng, found = np.random.default_rng(seed), []
    while len(found) < count:
        scene = sample_scene(rng, "train", shape="circle", colour="red")
        if scene.count == objects and scene.background.split is None and "red" not in scene.background.colours:
            found.append(scene)
    return found


def edges_and_mask(scene) -> tuple[Image.Image, np.ndarray]:
    from brushwork.shapes import render
    from brushwork.shapes.draw import render_condition

    picture = render(scene, SIZE)
    mask = np.asarray(render_condition(scene, picture, "mask").convert("L")) > 127
    return render_condition(scene, picture, "canny"), mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", type=int, default=50)
    parser.add_argument("--controlnet", default=SHIPPED, help="the ControlNet: the shipped one's name or a path")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from brushwork.engine.engine import Engine
    from brushwork.models.store import ModelStore
    from brushwork.recipe import ControlUnit, Recipe
    from brushwork.shapes.checker import detect, foreground

    torch.set_num_threads(os.cpu_count() or 1)
    store = ModelStore(allow_paths=True)
    engine = Engine(store)
    base = Recipe(prompt=PROMPT, sampler="Euler", steps=STEPS, cfg_scale=CFG, width=SIZE, height=SIZE, seed=0)

    def paint(recipe: Recipe) -> np.ndarray:
        return np.asarray(engine.run(recipe).images[0].image)

    started = time.perf_counter()
    singles = layouts(args.layouts, 1, seed=1)
    scores: dict[str, list[float]] = {"with_control": [], "without_control": [], "end_0.3": []}
    identical_at_weight_0, ours = [], []
    for number, scene in enumerate(singles):
        edges, mask = edges_and_mask(scene)
        unit = ControlUnit(model=args.controlnet, image=data_url(edges), resize_mode="Just Resize")
        recipe = base.model_copy(update={"seed": number})
        controlled = paint(recipe.model_copy(update={"control_units": [unit]}))
        plain = paint(recipe)
        ours.append(controlled)
        scores["with_control"].append(iou(foreground(controlled), mask))
        scores["without_control"].append(iou(foreground(plain), mask))
        early = paint(recipe.model_copy(update={"control_units": [unit.model_copy(update={"guidance_end": 0.3})]}))
        scores["end_0.3"].append(iou(foreground(early), mask))
        if number < 5:
            unit_off = unit.model_copy(update={"weight": 0.0})
            identical_at_weight_0.append(bool(np.array_equal(paint(recipe.model_copy(update={"control_units": [unit_off]})), plain)))

    pairs = layouts(max(args.layouts // 2, 1), 2, seed=2)
    both_placed, pair_iou, pair_plain = 0, [], []
    for number, scene in enumerate(pairs):
        units, masks = [], []
        for obj in scene.objects:  # one unit per circle, each with that circle's edges alone
            edges, mask = edges_and_mask(replace(scene, objects=[obj]))
            units.append(ControlUnit(model=args.controlnet, image=data_url(edges), resize_mode="Just Resize"))
            masks.append(mask)
        recipe = base.model_copy(update={"prompt": PAIR_PROMPT, "seed": number})
        painted = paint(recipe.model_copy(update={"control_units": units}))
        found = foreground(painted)
        both_placed += all(np.logical_and(found, mask).sum() >= 0.5 * mask.sum() for mask in masks) \
            and len(detect(painted)) == 2
        union = np.logical_or(*masks)
        pair_iou.append(iou(found, union))
        pair_plain.append(iou(foreground(paint(recipe)), union))

    result = {
        "layouts": len(singles), "controlnet": args.controlnet, "seconds": round(time.perf_counter() - started, 1),
        "iou_with_control": round(float(np.mean(scores["with_control"])), 3),
        "iou_without_control": round(float(np.mean(scores["without_control"])), 3),
        "iou_guidance_end_0.3": round(float(np.mean(scores["end_0.3"])), 3),
        "weight_0_identical_to_no_unit": all(identical_at_weight_0),
        "two_units": {"layouts": len(pairs), "both_circles_placed": round(both_placed / len(pairs), 3),
                      "iou_with_control": round(float(np.mean(pair_iou)), 3),
                      "iou_without_control": round(float(np.mean(pair_plain)), 3)},
        "diffusers": diffusers_peer(store, args.controlnet, singles, ours),
    }
    print(json.dumps(result), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


def diffusers_peer(store, controlnet: str, scenes, ours: list[np.ndarray]) -> dict:
    """diffusers' own ControlNet pipeline on the same weights, seeds and edge maps."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline

    from brushwork.models.control import load_control_model
    from brushwork.shapes.checker import foreground

    components = store.load(None).components
    network = load_control_model(store.resolve("controlnet", controlnet), device="cpu", dtype=torch.float32).network
    pipeline = StableDiffusionControlNetPipeline(
        vae=components.vae, text_encoder=components.text_encoders[0], tokenizer=components.tokenizers[0],
        unet=components.unet, controlnet=network, scheduler=EulerDiscreteScheduler.from_config(components.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    started, scores, difference = time.perf_counter(), [], 0
    for number, (scene, mine) in enumerate(zip(scenes, ours)):
        edges, mask = edges_and_mask(scene)
        picture = pipeline(PROMPT, image=edges, num_inference_steps=STEPS, guidance_scale=CFG, width=SIZE,
                           height=SIZE, generator=torch.Generator().manual_seed(number)).images[0]
        theirs = np.asarray(picture)
        scores.append(iou(foreground(theirs), mask))
        difference = max(difference, int(np.abs(theirs.astype(np.int16) - mine.astype(np.int16)).max()))
    return {"iou_with_control": round(float(np.mean(scores)), 3), "max_pixel_difference": difference,
            "seconds": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    sys.exit(main())
