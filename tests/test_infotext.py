"""Infotext written and read like AUTOMATIC1111 does it."""

from __future__ import annotations

import pytest

from brushwork import __version__
from brushwork.errors import RecipeError
from brushwork.infotext import format_infotext, parse_infotext, parse_params_line, quote, unquote
from brushwork.recipe import Recipe

A1111_NEW = (
    "a cyberpunk street, (brush stroke), [film grain]\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1234567890, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, "
    "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Clip skip: 2, Version: v1.10.1"
)

# A1111 1.6-era infotext: joined sampler name, hires fix and LoRA hashes as quoted values.
A1111_OLD = (
    "masterpiece, 1girl, <lora:add_detail:0.8>\n"
    "Negative prompt: (worst quality:1.4), EasyNegative\n"
    "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3702553003, Size: 512x512, "
    'Model hash: e4a30e4607, Model: majicmixRealistic_v6, Denoising strength: 0.4, Hires upscale: 2, '
    'Hires upscaler: R-ESRGAN 4x+, Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "EasyNegative: c74b4e810b03", '
    "Version: v1.6.0"
)


def make(**kwargs: object) -> str:
    """format_infotext with the picture values the tests do not care about."""
    recipe = kwargs.pop("recipe", Recipe(prompt="a cat"))
    args = {"seed": 42, "width": 512, "height": 512, "model_name": "v1-5", "model_hash": "abcdef1234"} | kwargs
    return format_infotext(recipe, **args)  # type: ignore[arg-type]


def test_format_matches_a1111_layout_exactly() -> None:
    recipe = Recipe(prompt="a cat", negative_prompt="blurry", sampler="Euler a", steps=20, cfg_scale=7.0, clip_skip=2)
    text = format_infotext(
        recipe, seed=42, width=512, height=768, model_name="v1-5", model_hash="abcdef1234",
        vae_name="vae-ft-mse.safetensors", vae_hash="735e4c3a44", extra={"Denoising strength": "0.5"},
    )
    assert text == (
        "a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x768, Model hash: abcdef1234, Model: v1-5, "
        "VAE hash: 735e4c3a44, VAE: vae-ft-mse.safetensors, Clip skip: 2, Denoising strength: 0.5, "
        f"Version: brushwork {__version__}"
    )


def test_format_leaves_out_empty_negative_missing_model_and_clip_skip_1() -> None:
    text = make(recipe=Recipe(prompt="a cat", cfg_scale=7.5), model_name=None, model_hash=None)
    assert text.splitlines() == [
        "a cat",
        f"Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 42, Size: 512x512, Version: brushwork {__version__}",
    ]


def test_format_quotes_values_that_would_break_the_line() -> None:
    text = make(model_name='C:\\models\\my, "best" model', extra={"Lora hashes": "detail: 7c6bad76eb54"})
    last = text.splitlines()[-1]
    assert 'Model: "C:\\\\models\\\\my, \\"best\\" model"' in last
    assert 'Lora hashes: "detail: 7c6bad76eb54"' in last
    recipe, params = parse_infotext(text)
    assert recipe.model == 'C:\\models\\my, "best" model'
    assert params["Lora hashes"] == "detail: 7c6bad76eb54"


@pytest.mark.parametrize(
    "key", ["Steps", "Schedule type", "Version", "bad:key", "a,b", "", "x", "a.b", "c+d", "trailing "]
)
def test_format_rejects_extra_keys_that_cannot_round_trip(key: str) -> None:
    with pytest.raises(ValueError, match="extra infotext key"):
        make(extra={key: "x"})


@pytest.mark.parametrize("value", ["plain", "a, b", "k: v", 'say "hi"', "two\nlines", "ünïcødé"])
def test_quote_and_unquote_are_inverse(value: str) -> None:
    assert unquote(quote(value)) == value
    # Quoted, the value stays one pair even among others on the parameters line.
    assert parse_params_line(f"A: {quote(value)}, B: 1") == {"A": value, "B": "1"}


def test_unquote_keeps_malformed_quoted_text() -> None:
    assert unquote('"not json\\"') == '"not json\\"'


def test_parse_a1111_1_10_infotext_with_schedule_type() -> None:
    recipe, params = parse_infotext(A1111_NEW)
    assert recipe.prompt == "a cyberpunk street, (brush stroke), [film grain]"
    assert recipe.negative_prompt == "blurry, lowres"
    assert recipe.sampler == "DPM++ 2M Karras"
    assert (recipe.steps, recipe.cfg_scale, recipe.seed) == (30, 7.5, 1234567890)
    assert (recipe.width, recipe.height, recipe.clip_skip) == (512, 768, 2)
    assert recipe.model == "v1-5-pruned-emaonly"
    assert recipe.vae == "vae-ft-mse-840000-ema-pruned.safetensors"
    assert params["Model hash"] == "6ce0161689"
    assert params["Schedule type"] == "Karras"
    assert params["Version"] == "v1.10.1"


def test_parse_older_a1111_infotext_keeps_unmodelled_fields() -> None:
    recipe, params = parse_infotext(A1111_OLD)
    assert recipe.prompt == "masterpiece, 1girl, <lora:add_detail:0.8>"
    assert recipe.negative_prompt == "(worst quality:1.4), EasyNegative"
    assert recipe.sampler == "DPM++ 2M Karras"
    assert recipe.cfg_scale == 7.0 and recipe.clip_skip == 1 and recipe.vae is None
    assert params["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert params["TI hashes"] == "EasyNegative: c74b4e810b03"
    assert params["Hires upscaler"] == "R-ESRGAN 4x+"
    assert params["Denoising strength"] == "0.4"


@pytest.mark.parametrize(
    ("sampler", "schedule", "expected"),
    [
        ("Euler a", "Automatic", "Euler a"),
        ("DPM++ 2M SDE", "Karras", "DPM++ 2M SDE Karras"),
        ("DPM++ 2M Karras", "Karras", "DPM++ 2M Karras"),
        ("UniPC", None, "UniPC"),
    ],
)
def test_parse_joins_sampler_and_schedule_type(sampler: str, schedule: str | None, expected: str) -> None:
    schedule_part = f", Schedule type: {schedule}" if schedule else ""
    text = f"x\nSteps: 20, Sampler: {sampler}{schedule_part}, CFG scale: 7, Seed: 1, Size: 512x512"
    assert parse_infotext(text)[0].sampler == expected


def test_parse_unknown_sampler_names_it() -> None:
    text = "x\nSteps: 20, Sampler: DPM adaptive, CFG scale: 7, Seed: 1, Size: 512x512"
    with pytest.raises(RecipeError, match="'DPM adaptive'"):
        parse_infotext(text)


@pytest.mark.parametrize(
    ("field", "match"),
    [
        ("Steps: many", "'Steps' must be a whole number"),
        ("Size: big", "'Size' must look like 512x768"),
        ("Size: 500x500", "width: must be a multiple of 8"),
        ("Steps: 0", "steps"),
    ],
)
def test_parse_bad_values_raise_recipe_error_naming_the_field(field: str, match: str) -> None:
    text = f"x\nSampler: Euler, CFG scale: 7, Seed: 1, {field}"
    with pytest.raises(RecipeError, match=match):
        parse_infotext(text)


def test_parse_prompt_only_text_uses_recipe_defaults() -> None:
    # Like A1111, a last line with fewer than 3 `key: value` pairs is still prompt.
    recipe, params = parse_infotext("a lighthouse at dusk\nstyle: noir, mood: calm")
    assert recipe.prompt == "a lighthouse at dusk\nstyle: noir, mood: calm"
    assert params == {}
    assert recipe.steps == Recipe().steps and recipe.seed == -1


def test_parse_empty_text_is_an_error() -> None:
    with pytest.raises(RecipeError, match="empty"):
        parse_infotext("  \n ")


def test_parse_accepts_windows_line_endings_and_bare_flags() -> None:
    text = "a cat\r\nNegative prompt: dog\r\nSteps: 12, Sampler: Euler, Tiling, CFG scale: 5, Seed: 9, Size: 64x64\r\n"
    recipe, params = parse_infotext(text)
    assert (recipe.prompt, recipe.negative_prompt, recipe.steps, recipe.cfg_scale) == ("a cat", "dog", 12, 5.0)
    assert params["Size"] == "64x64" and "Tiling" not in params


ROUND_TRIP_RECIPES = [
    Recipe(prompt="a cat"),
    Recipe(prompt="line one,\nline two\n\nline four", negative_prompt="bad\nworse", cfg_scale=12.25),
    Recipe(prompt="Steps: 99, Sampler: Euler, CFG scale: 1, Seed: 5, Size: 64x64", negative_prompt="Steps: 3"),
    Recipe(prompt="", negative_prompt="only a negative", sampler="LCM", steps=4, cfg_scale=1.5),
    Recipe(prompt="東京の夜, \"quoted\", colon: here", sampler="DPM++ 3M SDE Karras", clip_skip=2),
    Recipe(prompt="with model", model="sd_xl_base_1.0.safetensors", vae="sdxl_vae.safetensors", seed=7),
]


@pytest.mark.parametrize("recipe", ROUND_TRIP_RECIPES)
def test_format_then_parse_gives_the_same_recipe(recipe: Recipe) -> None:
    text = format_infotext(
        recipe, seed=1234, width=512, height=768, model_name=recipe.model, model_hash="6ce0161689",
        vae_name=recipe.vae, vae_hash="735e4c3a44" if recipe.vae else None,
    )
    parsed, params = parse_infotext(text)
    assert parsed == recipe.model_copy(update={"seed": 1234, "width": 512, "height": 768})
    assert params["Model hash"] == "6ce0161689"
    assert params["Version"] == f"brushwork {__version__}"


def test_prompt_lines_are_read_as_a1111_reads_them() -> None:
    # Each line stripped, inner blank lines kept, "Negative prompt:" cut from every line that starts with it.
    text = "  a fox,  \n\n  in snow\nNegative prompt: ugly\nNegative prompt: blurry\nSteps: 2, Sampler: Euler, Seed: 1"
    recipe, params = parse_infotext(text)
    assert (recipe.prompt, recipe.negative_prompt) == ("a fox,\n\nin snow", "ugly\nblurry")
    assert params == {"Steps": "2", "Sampler": "Euler", "Seed": "1"}


def test_old_hires_fix_first_pass_size_becomes_the_recipe_size() -> None:
    text = ("a hill\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 768x768, Denoising strength: 0.6, "
            "First pass size: 0x0")
    recipe, _ = parse_infotext(text)
    assert (recipe.width, recipe.height) == (512, 512)  # A1111's old automatic first pass for 768x768
    assert recipe.hires is not None and (recipe.hires.resize_width, recipe.hires.resize_height) == (768, 768)
    assert recipe.hires.denoising_strength == 0.6 and recipe.denoising_strength == Recipe().denoising_strength


def test_sampler_names_live_outside_the_engine() -> None:
    import subprocess
    import sys

    from brushwork.engine.samplers import SAMPLERS
    from brushwork.sampler_names import SAMPLER_NAMES

    assert tuple(SAMPLERS) == SAMPLER_NAMES
    probe = "import sys, brushwork.infotext; print(any(m.startswith('brushwork.engine') for m in sys.modules))"
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "False"
