"""The shipped model (brushwork/assets/default-model): it loads like any checkpoint and paints what it is asked.

Scores come from the classic-CV shapes checker on fixed prompts and seeds, so they are the same on every
run of one machine; the thresholds are the issue's targets minus a margin for the smaller sample here
(96 pictures instead of 400) and for float differences between CPUs. The full measurement
(`brushwork eval shapes`, 200 prompts x 2 seeds) is recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from brushwork.cli import main
from brushwork.engine.engine import Engine
from brushwork.models.single_file import read_metadata, sibling_yaml
from brushwork.models.store import EMBEDDED_MODEL, ModelStore
from brushwork.recipe import Recipe
from brushwork.shapes import check
from brushwork.train.evaluate import engine_source, eval_prompts, score

# The targets on seen combinations at CFG 7 (20 steps), and this test's margin below them.
# Backgrounds are no target of the issue, but the v-prediction schedule made the model follow them (100% in
# docs/benchmarks.md), and this keeps it so.
TARGETS = {"colour": 0.90, "shape": 0.80, "colour+shape": 0.75, "position": 0.70, "count": 0.60, "background": 0.90}
MARGIN = 0.10


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(ModelStore())  # no models folder, no paths: the default model is the embedded one


@pytest.fixture(scope="module")
def path_store() -> ModelStore:
    return ModelStore(allow_paths=True)  # the scorer names the model by its path


def test_shipped_file_is_small_fp16_with_its_config_and_record() -> None:
    assert EMBEDDED_MODEL.exists()
    assert EMBEDDED_MODEL.stat().st_size < 30 * 1024 * 1024
    assert sibling_yaml(EMBEDDED_MODEL) is not None
    training = json.loads(read_metadata(EMBEDDED_MODEL)["brushwork.training"])
    assert training["command"].startswith("brushwork train base") and training["steps"] > 0
    assert "seed" in training and "data_fingerprint" in training


def test_default_model_loads_through_the_single_file_path(engine: Engine) -> None:
    loaded = engine.store.load(None)
    assert loaded.path == EMBEDDED_MODEL
    assert loaded.components.family == "sd1"
    assert loaded.components.unet.config.in_channels == 4
    assert loaded.components.native_size == 64


def test_readme_command_paints_the_asked_picture_without_a_model(tmp_path) -> None:
    prompt = "a red circle on a blue background"
    code = main(["generate", prompt, "--seed", "1", "--batch-size", "4", "--output-dir", str(tmp_path), "--no-progress"])
    assert code == 0
    written = sorted(tmp_path.rglob("*.png"))
    assert len(written) == 4
    verdicts = [check(Image.open(path).convert("RGB"), prompt) for path in written]
    assert sum(v.colour_ok and v.shape_ok and v.count_ok and v.background_ok for v in verdicts) >= 3, verdicts


@pytest.mark.slow
def test_fixed_prompts_score_above_the_targets(path_store: ModelStore) -> None:
    prompts = eval_prompts(48, "train")
    result = score(prompts, engine_source(EMBEDDED_MODEL, steps=20, cfg_scale=7.0, store=path_store), [0, 1], 7.0)
    accuracy = result.accuracy()
    for attribute, target in TARGETS.items():
        assert accuracy[attribute] >= target - MARGIN, (attribute, accuracy)


@pytest.mark.slow
def test_guidance_matters(path_store: ModelStore) -> None:
    """CFG 1 -> 7 makes the asked shape more frequent: 76% -> 88% over both splits in the full measurement."""
    prompts = eval_prompts(24, "train") + eval_prompts(24, "heldout")
    shape = {
        cfg: score(prompts, engine_source(EMBEDDED_MODEL, steps=20, cfg_scale=cfg, store=path_store), [0, 1], cfg)
        .accuracy()["shape"]
        for cfg in (1.0, 7.0)
    }
    assert shape[7.0] >= shape[1.0] + 0.08, shape


@pytest.mark.slow
def test_position_words_move_the_object(engine: Engine) -> None:
    """The same seeds, nine position words: the object goes where each one says."""
    phrases = {"top left": "in the top left corner", "top": "at the top", "top right": "in the top-right corner",
               "left": "on the left", "centre": "in the centre", "right": "on the right side",
               "bottom left": "at the bottom left", "bottom": "near the bottom", "bottom right": "in the bottom right corner"}
    placed = []
    for thing in ("a large red circle", "a blue star"):
        for position, phrase in phrases.items():
            prompt = f"{thing} {phrase} on a white background"
            for generated in engine.run(Recipe(prompt=prompt, seed=0, batch_size=2, steps=20)).images:
                verdict = check(generated.image, prompt)
                placed.append((position, [o.position for o in verdict.objects], verdict.position_ok))
    right = sum(ok for _, _, ok in placed)
    assert right >= (TARGETS["position"] - MARGIN) * len(placed), placed


def test_inpainting_paints_the_asked_shape_into_the_masked_corner(engine: Engine, tmp_path) -> None:
    """Issue 5's check on a real model: a red circle appears inside the masked corner and nowhere else."""
    Image.new("RGB", (64, 64), (245, 245, 245)).save(tmp_path / "blank.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    mask.save(tmp_path / "mask.png")
    prompt = "a red circle on a white background"
    recipe = Recipe(prompt=prompt, init_image=str(tmp_path / "blank.png"), mask=str(tmp_path / "mask.png"), mask_blur=0,
                    denoising_strength=1.0, inpainting_fill="latent noise", inpaint_full_res=True,
                    inpaint_full_res_padding=0, seed=0, batch_size=4, steps=20)
    blank = np.asarray(Image.open(tmp_path / "blank.png"))
    right = 0
    for generated in engine.run(recipe).images:
        pixels = np.asarray(generated.image)
        assert np.array_equal(pixels[32:], blank[32:]) and np.array_equal(pixels[:, 32:], blank[:, 32:])
        verdict = check(generated.image, prompt)
        in_corner = all(x < 0.5 and y < 0.5 for x, y in (o.centre for o in verdict.objects))  # fractions of the side
        right += bool(verdict.colour_ok and verdict.shape_ok and verdict.count_ok and in_corner)
    assert right >= 3


def test_the_shipped_canny_controlnet_puts_the_circle_where_its_edges_are(tmp_path) -> None:
    """`brushwork generate "a red circle" --control model=brushwork-shapes-canny,image=EDGES` with no models
    folder: the painted object lies on the drawn circle's place (IoU >= 0.5 on each of 3 layouts), which the
    prompt alone does not find (bench/controlnet_proof.py measures 50 layouts)."""
    from brushwork.shapes import Background, Scene, ShapeObject, render
    from brushwork.shapes.checker import foreground
    from brushwork.shapes.draw import render_condition

    layouts = [((0.3, 0.35), 0.2, "blue"), ((0.7, 0.65), 0.16, "white"), ((0.65, 0.3), 0.22, "green")]
    for number, (centre, radius, background) in enumerate(layouts):
        circle = ShapeObject(shape="circle", colour="red", size="large", position="centre", centre=centre,
                             radius=radius, rotation=0.0)
        scene = Scene(objects=[circle], background=Background(colours=(background,)), caption="a red circle",
                      mentions=("colour", "shape"))
        drawing = render(scene, 64)
        edges = tmp_path / f"edges-{number}.png"
        render_condition(scene, drawing, "canny").save(edges)
        target = np.asarray(render_condition(scene, drawing, "mask").convert("L")) > 127
        argv = ["generate", "a red circle", "--sampler", "Euler", "--steps", "20", "--seed", str(number),
                "--no-progress", "-o", str(tmp_path / f"out-{number}"), "--control",
                f"model=brushwork-shapes-canny,image={edges},resize=just"]
        assert main(argv) == 0
        painted = foreground(Image.open(next((tmp_path / f"out-{number}").glob("*.png"))).convert("RGB"))
        overlap = np.logical_and(painted, target).sum() / np.logical_or(painted, target).sum()
        assert overlap >= 0.5, (number, overlap)
