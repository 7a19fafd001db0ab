"""The ControlNet extension's `ControlNet <n>` infotext: written as sd-webui-controlnet writes it, read back into
the Recipe's control units, and read by A1111's own parser rules."""

from __future__ import annotations

import hashlib

import pytest

from brushwork.errors import RecipeError
from brushwork.control.infotext import controlnet_extras, controlnet_model_title
from brushwork.infotext import a1111_parameters, format_infotext, parse_infotext
from brushwork.recipe import ControlUnit, Recipe

TITLES = ["control_v11p_sd15_canny [d14c016b]", "t2iadapter_color [743b5c62]"]
UNITS = [
    ControlUnit(model="control_v11p_sd15_canny", image="ignored.png", module="canny", weight=0.8, guidance_start=0.1,
                guidance_end=0.9, control_mode="My prompt is more important", resize_mode="Just Resize",
                processor_res=640, threshold_a=50, threshold_b=150),
    ControlUnit(model="t2iadapter_color", module="tile_resample", weight=1.25, threshold_a=2.5, pixel_perfect=True,
                resize_mode="Resize and Fill", control_mode="ControlNet is more important"),
]

# Shaped after pictures the extension made (A1111 1.6-1.8): the fields it writes, "-1" settings left out,
# Low Vram, Hr Option and Save Detected Map included.
EXTENSION_TEXT = (
    "a girl in a garden, masterpiece\n"
    "Negative prompt: lowres, blurry\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 191751643, Size: 512x512, Model hash: cbfba64e66, "
    'Model: counterfeitV30_v30, ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], '
    "Weight: 0.75, Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 512, Threshold A: 100, "
    "Threshold B: 200, Guidance Start: 0, Guidance End: 0.8, Pixel Perfect: False, Control Mode: My prompt is more "
    'important, Hr Option: Both, Save Detected Map: True", ControlNet 1: "Module: none, Model: '
    "control_v11f1p_sd15_depth [cfd03158], Weight: 1, Resize Mode: Just Resize, Low Vram: False, Guidance Start: 0, "
    'Guidance End: 1, Pixel Perfect: True, Control Mode: Balanced", TI hashes: "easynegative: c74b4e810b03", '
    "Version: v1.6.1"
)


def written(units=UNITS, titles=TITLES, **recipe) -> str:
    extra = controlnet_extras(units, titles)
    return format_infotext(Recipe(prompt="a red circle", control_units=units, **recipe), seed=3, width=512,
                           height=512, model_name="tiny", model_hash="0123456789", extra=extra)


def test_units_are_written_as_the_extension_writes_them():
    extras = controlnet_extras(UNITS, TITLES)
    assert extras == {
        "ControlNet 0": "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.8, Resize Mode: Just "
                        "Resize, Processor Res: 640, Threshold A: 50, Threshold B: 150, Guidance Start: 0.1, "
                        "Guidance End: 0.9, Pixel Perfect: False, Control Mode: My prompt is more important",
        "ControlNet 1": "Module: tile_resample, Model: t2iadapter_color [743b5c62], Weight: 1.25, Resize Mode: Resize "
                        "and Fill, Processor Res: 512, Threshold A: 2.5, Guidance Start: 0, Guidance End: 1, "
                        "Pixel Perfect: True, Control Mode: ControlNet is more important",
    }
    assert 'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.8,' in written()
    # Unset thresholds are the module's defaults, written out; a module without that slider gets none.
    defaults = controlnet_extras([ControlUnit(model="m", module="canny")], ["m [0]"])["ControlNet 0"]
    assert "Weight: 1, Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100, Threshold B: 200, " \
           "Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced" in defaults
    assert "Threshold" not in controlnet_extras([ControlUnit(model="m", threshold_a=5)], ["m [0]"])["ControlNet 0"]


def test_written_units_parse_back_to_the_same_settings():
    recipe, params = parse_infotext(written())
    assert len(recipe.control_units) == 2 and params["ControlNet 1"].startswith("Module: tile_resample,")
    for parsed, unit, title in zip(recipe.control_units, UNITS, TITLES):
        assert parsed.model == title and parsed.image is None  # the Engine asks for the picture
        assert parsed.model_dump(exclude={"model", "image"}) == unit.model_dump(exclude={"model", "image"})
    # Defaults written out read back as the same values.
    default = parse_infotext(written([ControlUnit(model="m", module="canny")], ["m [0]"]))[0].control_units[0]
    assert (default.threshold_a, default.threshold_b, default.processor_res) == (100, 200, 512)


def test_a1111_reads_each_unit_as_one_quoted_value():
    text = written(negative_prompt="blurry, lowres")
    parameters = a1111_parameters(text)
    assert parameters["ControlNet 0"] == controlnet_extras(UNITS, TITLES)["ControlNet 0"]
    assert (parameters["Prompt"], parameters["Negative prompt"], parameters["Seed"]) == ("a red circle", "blurry, lowres", "3")
    # The extension's own reading of the value (parse_unit): split at "," then at ": ".
    fields = dict(item.strip().split(": ") for item in parameters["ControlNet 1"].split(","))
    assert fields["Control Mode"] == "ControlNet is more important" and fields["Threshold A"] == "2.5"


def test_an_extension_infotext_parses():
    recipe, params = parse_infotext(EXTENSION_TEXT)
    assert (recipe.prompt, recipe.seed, recipe.model) == ("a girl in a garden, masterpiece", 191751643, "counterfeitV30_v30")
    canny, depth = recipe.control_units
    assert (canny.module, canny.model, canny.weight, canny.guidance_end) == (
        "canny", "control_v11p_sd15_canny [d14c016b]", 0.75, 0.8)
    assert (canny.threshold_a, canny.threshold_b, canny.resize_mode, canny.control_mode) == (
        100, 200, "Crop and Resize", "My prompt is more important")
    assert (depth.module, depth.pixel_perfect, depth.resize_mode, depth.threshold_a, depth.image) == (
        "none", True, "Just Resize", None, None)
    assert a1111_parameters(EXTENSION_TEXT)["ControlNet 1"] == params["ControlNet 1"]


@pytest.mark.parametrize("unit, words", [
    ("Module: canny, Model: x [1], Hr Option: Low res only", "Hr Option 'Low res only'"),
    ("Module: canny, Weight: 1", "names no Model"),
    ("Module: canny, Model: x [1], broken", "'broken' is not a 'Name: value' pair"),
    ("Module: canny, Model: x [1], Weight: heavy", "control_units.0.weight"),
])
def test_bad_units_name_the_field(unit, words):
    text = f'a cat\nSteps: 20, Sampler: Euler, Size: 64x64, Hires upscale: 2, ControlNet 0: "{unit}", Version: v1.6.0'
    with pytest.raises(RecipeError, match=words):
        parse_infotext(text)


def test_hr_option_matters_only_with_the_hires_fix():
    text = 'a cat\nSteps: 20, Sampler: Euler, ControlNet 0: "Module: canny, Model: x [1], Hr Option: High res only"'
    assert parse_infotext(text)[0].control_units[0].model == "x [1]"


def test_unit_with_an_unwritable_setting_is_left_out_as_the_extension_does():
    assert controlnet_extras([ControlUnit(model="a,b")], ["a,b [e3b0c442]"]) == {}


def test_model_titles_use_a1111s_old_hash(tmp_path):
    data = bytes(range(256)) * (5 * 4096)  # 5 MiB
    (tmp_path / "canny.safetensors").write_bytes(data)
    expected = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert controlnet_model_title(tmp_path / "canny.safetensors") == f"canny [{expected}]"
    (tmp_path / "small.pth").write_bytes(b"tiny")
    assert controlnet_model_title(tmp_path / "small.pth") == f"small [{hashlib.sha256(b'').hexdigest()[:8]}]"
    folder = tmp_path / "depth-diffusers"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert controlnet_model_title(folder) == "depth-diffusers [NOFILE]"
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(data)
    assert controlnet_model_title(folder) == f"depth-diffusers [{expected}]"
