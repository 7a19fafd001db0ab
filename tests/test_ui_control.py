"""The web UI's ControlNet units without a browser: form -> Recipe.control_units, the per-module sliders, the
Preview handler, and the Generate handler submitting a unit to the real queue with a tiny ControlNet."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from brushwork.control.preprocessors import INVERT, PREPROCESSORS, fit_to_size, preprocess
from brushwork.control.units import ControlUnits
from brushwork.errors import BrushworkError
from brushwork.models.store import ModelStore
from brushwork.serve.jobs import Job
from brushwork.serve.app import create_app
from brushwork.serve.limits import OverLimit
from brushwork.serve.settings import Limits, Settings
from brushwork.serve.ui_control import CONTROL_UNITS, control_map, module_settings, resolution_setting
from brushwork.serve.ui_forms import (
    AUTOMATIC, IMG2IMG_FIELDS, SAME_SAMPLER, TXT2IMG_FIELDS, control_fields, recipe_from_form,
)
from tiny_controls import write_tiny_controlnet
from tiny_models import write_tiny_checkpoint

LIMITS = Limits(max_pixels=256 * 256, max_steps=60, max_batch=4, max_upload_bytes=256 * 1024, max_image_side=512)

BASE_FORM: dict[str, Any] = {
    "prompt": "a red circle", "negative_prompt": "", "styles": [], "model": "tiny.safetensors", "vae": AUTOMATIC,
    "sampler": "Euler", "steps": 2, "cfg_scale": 7, "seed": 7, "width": 64, "height": 64,
    "batch_size": 1, "batch_count": 1, "clip_skip": 1,
}
TXT2IMG_FORM = BASE_FORM | {
    "hires_enable": False, "hires_upscaler": "Latent", "hires_scale": 2.0, "hires_resize_width": 0,
    "hires_resize_height": 0, "hires_steps": 0, "hires_denoising": 0.7, "hires_prompt": "", "hires_negative": "",
    "hires_sampler": SAME_SAMPLER,
}
IMG2IMG_FORM = BASE_FORM | {
    "mode": "img2img", "init_image": None, "inpaint": None, "denoising_strength": 0.5, "resize_mode": "just resize",
    "mask_blur": 4, "inpainting_fill": "original", "inpaint_area": "Whole picture", "inpaint_padding": 32,
    "mask_mode": "Inpaint masked", "outpaint_left": 0, "outpaint_right": 0, "outpaint_top": 0, "outpaint_bottom": 0,
}
UNIT_DEFAULTS: dict[str, Any] = {  # as the page starts: disabled, no picture, no model, hidden sliders at 0
    "enable": False, "image": None, "model": None, "weight": 1.0, "guidance_start": 0.0, "guidance_end": 1.0,
    "control_mode": "Balanced", "module": "none", "resize_mode": "Crop and Resize", "processor_res": 512,
    "threshold_a": 0, "threshold_b": 0, "pixel_perfect": False,
}


def units(**changed: dict[str, Any]) -> dict[str, Any]:
    """Every unit's form fields at the page's defaults, with `unit0={...}` etc. changed."""
    form = {}
    for index in range(CONTROL_UNITS):
        for field, value in (UNIT_DEFAULTS | changed.get(f"unit{index}", {})).items():
            form[f"control_{index}_{field}"] = value
    return form


def square_picture(size: int = 64, mode: str = "RGB") -> Image.Image:
    picture = Image.new(mode, (size, size), "black")
    picture.paste("white", (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return picture


def decode(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.partition(",")[2])))


CANNY = {"enable": True, "module": "canny", "model": "edges", "threshold_a": 50, "threshold_b": 150,
         "weight": 0.8, "guidance_start": 0.1, "guidance_end": 0.9, "control_mode": "ControlNet is more important",
         "resize_mode": "Just Resize", "processor_res": 256, "pixel_perfect": True}


# -- form -> Recipe.control_units ------------------------------------------------------------------------------

def test_enabled_units_with_picture_and_model_become_control_units():
    sketch = square_picture(48, "RGBA")
    form = TXT2IMG_FORM | units(unit0=CANNY | {"image": sketch},
                                unit1={"image": square_picture(), "model": "edges"})  # filled in, not enabled
    [unit] = recipe_from_form(form).control_units
    assert unit.model_dump(exclude={"image"}) == {
        "model": "edges", "module": "canny", "weight": 0.8, "guidance_start": 0.1, "guidance_end": 0.9,
        "control_mode": "ControlNet is more important", "resize_mode": "Just Resize", "processor_res": 256,
        "threshold_a": 50.0, "threshold_b": 150.0, "pixel_perfect": True,
    }
    inlined = decode(unit.image)
    assert inlined.size == (48, 48) and inlined.mode == "RGBA"  # as uploaded: the preprocessor composites alpha
    assert recipe_from_form(TXT2IMG_FORM | units()).control_units == []  # the page as it starts: no units
    assert recipe_from_form(TXT2IMG_FORM).control_units == []  # a form without unit fields: none either


def test_thresholds_are_sent_only_where_the_module_has_the_slider():
    picture = square_picture()
    form = TXT2IMG_FORM | units(unit0={"enable": True, "image": picture, "model": "edges", "module": "threshold",
                                       "threshold_a": 90, "threshold_b": 33},
                                unit2={"enable": True, "image": picture, "model": "edges", "module": "depth_midas",
                                       "threshold_a": 12, "threshold_b": 34})
    first, third = recipe_from_form(form).control_units
    assert (first.module, first.threshold_a, first.threshold_b) == ("threshold", 90.0, None)
    assert (third.module, third.threshold_a, third.threshold_b) == ("depth_midas", None, None)


def test_img2img_units_without_a_picture_use_the_init_picture():
    form = IMG2IMG_FORM | {"init_image": square_picture()} | units(unit0={"enable": True, "model": "edges"})
    recipe = recipe_from_form(form)
    assert recipe.control_units[0].image is None and recipe.init_image is not None


@pytest.mark.parametrize("unit, words", [
    ({"enable": True, "model": "edges"}, "ControlNet Unit 1: upload a picture to control with"),
    ({"enable": True, "image": square_picture()}, "ControlNet Unit 1: pick a ControlNet model"),
    ({"enable": True, "image": square_picture(), "model": "edges", "module": "seg_ofade20k"},
     "ControlNet Unit 1: ControlNet preprocessor 'seg_ofade20k' is an sd-webui-controlnet module brushwork does not"),
])
def test_incomplete_units_are_refused_by_unit(unit, words):
    with pytest.raises(BrushworkError, match=words):
        recipe_from_form(TXT2IMG_FORM | units(unit1=unit))


def test_unit_values_the_recipe_refuses_name_the_unit():
    from brushwork.serve.ui_studio import describe

    with pytest.raises(ValidationError) as caught:
        recipe_from_form(TXT2IMG_FORM | units(unit0=CANNY | {"image": square_picture(), "guidance_start": 0.8,
                                                                  "guidance_end": 0.2}))
    assert describe(caught.value) == "control_units.0: guidance_start (0.8) must not be after guidance_end (0.2)"


# -- the per-module sliders ------------------------------------------------------------------------------------

def test_module_change_shows_relabels_and_hides_the_thresholds():
    low, high, resolution = module_settings("canny", False)
    assert (low.label, low.minimum, low.maximum, low.value, low.step) == ("Low Threshold", 1, 255, 100, 1)
    assert low.visible
    assert (high.label, high.value) == ("High Threshold", 200) and resolution.visible
    level, hidden, _ = module_settings("scribble_xdog", False)
    assert (level.label, level.minimum, level.maximum, level.value) == ("XDoG Threshold", 1, 64, 32)
    assert hidden.visible is False and "label" not in hidden.constructor_args  # only hidden, not reset
    for module in ("none", "tile_resample"):  # modules that keep the picture's size take no resolution
        assert module_settings(module, False)[2].visible is False
    assert module_settings("canny", True)[2].visible is False  # Pixel Perfect picks the resolution
    assert resolution_setting("canny", True).visible is False and resolution_setting("canny", False).visible
    every_slider = [p for p in PREPROCESSORS.values() if p.threshold_a is not None]
    assert all(module_settings(p.name, False)[0].label == p.threshold_a.name for p in every_slider)


# -- Preview ----------------------------------------------------------------------------------------------------

@pytest.fixture
def detector(tmp_path):
    return ControlUnits(ModelStore(tmp_path / "models"))


def test_preview_is_the_map_the_engine_uses(detector):
    picture = square_picture(80)
    form = TXT2IMG_FORM | {"width": 64, "height": 48} | units(unit0=CANNY | {"image": picture})
    preview = control_map(detector, LIMITS, form, 0)
    unit = recipe_from_form(form).control_units[0]
    assert preview.size == (64, 48)
    assert np.array_equal(np.asarray(preview), np.asarray(detector.detect(unit, picture, 64, 48)))
    edges = np.asarray(preview)
    assert edges.max() == 255 and edges[0, 0].max() == 0  # the square's outline, nothing in the corner

    # Not pixel perfect: the unit's own resolution, then fitted to the size.
    form = form | units(unit0=CANNY | {"image": picture, "pixel_perfect": False, "processor_res": 128,
                                       "resize_mode": "Crop and Resize"})
    expected = fit_to_size(preprocess("canny", picture, 128, 50, 150), 64, 48, "Crop and Resize")
    assert np.array_equal(np.asarray(control_map(detector, LIMITS, form, 0)), np.asarray(expected))


def test_preview_at_native_size_uses_the_pictures_size_and_img2img_its_own_picture(detector):
    picture = square_picture(40)
    form = TXT2IMG_FORM | {"width": 0, "height": 0} | units(unit0={"image": picture, "module": INVERT})
    inverted = control_map(detector, LIMITS, form, 0)  # not enabled: Preview works all the same
    assert inverted.size == (40, 40) and inverted.getpixel((0, 0)) == (255, 255, 255)

    form = IMG2IMG_FORM | {"init_image": square_picture(32), "width": 0} | units(unit2={"module": "none"})
    assert control_map(detector, LIMITS, form, 2).size == (32, 32)
    editor = {"background": square_picture(24), "layers": []}
    assert control_map(detector, LIMITS, form | {"mode": "inpaint", "inpaint": editor}, 2).size == (24, 24)


def test_preview_without_a_picture_or_with_a_huge_one_says_so(detector):
    with pytest.raises(BrushworkError, match="ControlNet Unit 1: upload a picture to preview"):
        control_map(detector, LIMITS, TXT2IMG_FORM | units(), 1)
    with pytest.raises(OverLimit, match="600x8, over this server's limit of 512"):
        control_map(detector, LIMITS, TXT2IMG_FORM | units(unit0={"image": Image.new("RGB", (600, 8))}), 0)


# -- the handlers on a real app ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from brushwork.serve.ui import mount
    from brushwork.serve.ui_studio import Studio

    root = tmp_path_factory.mktemp("ui-control")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint("sd1", root / "models" / "Stable-diffusion" / "tiny.safetensors")
    write_tiny_controlnet(root / "models" / "ControlNet" / "edges", family="sd1", layout="folder", seed=1)
    settings = Settings(models_dir=root / "models", data_dir=root / "data", limits=LIMITS)
    app = create_app(settings, store=ModelStore(root / "models", hash_cache=root / "hashes.json"), ui=mount)
    with TestClient(app, raise_server_exceptions=False):  # runs the lifespan: the queue works
        state = app.state
        yield Studio(jobs=state.jobs, store=state.store, settings=state.settings, upscalers=state.upscalers,
                     training=state.training)


def handlers(studio, name: str) -> dict[str, Any]:
    """The page's handlers called `name`, by the tab (txt2img, img2img) whose components they read."""
    from brushwork.serve.ui import build_ui

    found = {}
    for fn in build_ui(studio).fns.values():
        kinds = {str(getattr(c, "elem_id", "")).split("-")[0] for c in fn.inputs} & {"txt2img", "img2img"}
        if fn.name == name and kinds:
            found.setdefault(kinds.pop(), []).append(fn)
    return found


def test_each_tab_has_three_units_and_lists_the_controlnet_folder(studio):
    from brushwork.serve.ui import build_ui

    blocks = build_ui(studio).blocks.values()
    for kind in ("txt2img", "img2img"):
        tabs = [block.label for block in blocks if str(getattr(block, "elem_id", "")).startswith(f"{kind}-control-")
                and str(block.elem_id).endswith("-tab")]
        assert tabs == ["ControlNet Unit 0", "ControlNet Unit 1", "ControlNet Unit 2"]
        [model] = [block for block in blocks if getattr(block, "elem_id", None) == f"{kind}-control-0-model"]
        assert [value for _, value in model.choices] == ["edges", "brushwork-shapes-canny.safetensors"] and model.value is None
        [module] = [block for block in blocks if getattr(block, "elem_id", None) == f"{kind}-control-0-module"]
        assert [value for _, value in module.choices] == list(PREPROCESSORS)
    assert studio.controlnets() == ["edges", "brushwork-shapes-canny.safetensors"]  # the folder's, then the shipped one


def test_preview_handler_shows_the_map_and_errors_readably(studio):
    from brushwork.serve.ui_studio import gr

    previews = handlers(studio, "preview_map")
    assert len(previews["txt2img"]) == len(previews["img2img"]) == CONTROL_UNITS
    preview = previews["txt2img"][0]
    values = {"txt2img-control-0-image": square_picture(), "txt2img-control-0-module": "canny",
              "txt2img-control-0-threshold-a": 100, "txt2img-control-0-threshold-b": 200,
              "txt2img-width": 64, "txt2img-height": 64}
    shown = preview.fn(*(values.get(c.elem_id, c.value) for c in preview.inputs))
    assert shown.size == (64, 64) and np.asarray(shown).max() == 255
    with pytest.raises(gr.Error, match="upload a picture to preview"):
        preview.fn(*(c.value for c in preview.inputs))


def generate(studio, kind: str, form: dict[str, Any]) -> tuple[list[str], Job | None]:
    """`kind`'s Generate handler run on `form` (the tab's fields, then its units'): (the progress it showed,
    the job it queued, None if none)."""
    [run] = handlers(studio, "run")[kind]
    progress, job_id = run.outputs[0], run.outputs[3]
    names = (TXT2IMG_FIELDS if kind == "txt2img" else IMG2IMG_FIELDS) + control_fields(CONTROL_UNITS)
    assert [c.elem_id for c in run.inputs[-len(control_fields(CONTROL_UNITS)):][:2]] == [
        f"{kind}-control-0-enable", f"{kind}-control-0-image"]  # the units follow the tab's fields
    updates = list(run.fn(None, "control-test", *(form[name] for name in names)))
    job = studio.jobs.get(updates[0][job_id]) if job_id in updates[0] else None
    return [update[progress] for update in updates], job


def test_generate_submits_the_unit_to_the_queue_and_refuses_incomplete_ones(studio):
    form = TXT2IMG_FORM | units(unit0={"enable": True, "image": square_picture(), "model": "edges", "module": "canny",
                                       "threshold_a": 100, "threshold_b": 200})
    _, job = generate(studio, "txt2img", form)
    assert job.state.value == "done" and len(job.images) == 1, job.error
    [unit] = job.recipe.control_units
    assert (unit.model, unit.module, unit.threshold_a) == ("edges", "canny", 100.0) and unit.image.startswith("data:")

    queued = len(studio.jobs.list_jobs(owner="ui-control-test"))
    with pytest.warns(UserWarning, match="ControlNet Unit 0: pick a ControlNet model"):
        [shown], job = generate(studio, "txt2img", form | units(unit0={"enable": True, "image": square_picture()}))
    assert "Error: ControlNet Unit 0: pick a ControlNet model" in shown and job is None
    assert len(studio.jobs.list_jobs(owner="ui-control-test")) == queued  # nothing was queued

    form = IMG2IMG_FORM | {"init_image": square_picture()} | units(unit1={"enable": True, "model": "edges"})
    _, job = generate(studio, "img2img", form)
    assert job.state.value == "done", job.error
    assert [unit.image for unit in job.recipe.control_units] == [None]  # the init picture controls it
