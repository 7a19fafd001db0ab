"""A1111's "SD upscale" img2img script: the tile grid, the blend, one seed per tile, the Recipe part, the
/sdapi payload (A1111's own API test case included), bad script_args and the infotext round trip."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from brushwork.commands.generate import recipe_from_png
from brushwork.engine.engine import Engine
from brushwork.engine.sd_upscale import combine_grid, crop_tiles, split_grid, tile_seeds, upscaled_size
from brushwork.errors import RecipeError
from brushwork.infotext import parse_infotext
from brushwork.models.store import ModelStore
from brushwork.output import save_png
from brushwork.recipe import Recipe, SdUpscale
from brushwork.serve.api.sdapi_adapter import img2img_recipe
from brushwork.serve.api.sdapi_schemas import Img2ImgRequest
from brushwork.serve.deps import WebuiOptions
from test_api import assert_clean_error, data_url, make_client, models_dir, png_bytes  # noqa: F401
from tiny_models import write_tiny_checkpoint

SETTINGS = {"overlap": 8, "upscaler": "Lanczos", "scale": 2.0}


def _noise_picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


# -- the grid ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, tile, overlap, columns, rows", [
    ((128, 128), (64, 64), 8, (0, 32, 64), (0, 32, 64)),  # A1111's API test: 3x3 tiles
    ((512, 512), (512, 512), 64, (0,), (0,)),  # the picture is one tile
    ((1024, 768), (512, 512), 64, (0, 256, 512), (0, 256)),
    ((200, 64), (64, 64), 0, (0, 45, 90, 136), (0,)),  # no overlap: spread evenly, positions truncated
    ((100, 60), (64, 64), 16, (0, 36), (-4,)),  # a tile taller than the picture sticks out (black) above it
    ((80, 48), (32, 32), 8, (0, 24, 48), (0, 16)),
])
def test_tile_grid_positions_and_overlap(size, tile, overlap, columns, rows):
    grid = split_grid(size, *tile, overlap)
    assert [y for y, _ in grid.rows] == list(rows)
    assert all(xs == columns for _, xs in grid.rows)
    assert len(grid.boxes) == len(rows) * len(columns)
    for starts, side, length in ((columns, tile[0], size[0]), (rows, tile[1], size[1])):
        assert starts[-1] + side == length  # the last tile is flush with the far edge
        assert all(b - a <= side - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap


def test_overlap_must_be_smaller_than_a_tile():
    with pytest.raises(RecipeError, match="overlap"):
        split_grid((128, 128), 64, 32, 32)


@pytest.mark.parametrize("size, tile, overlap", [((128, 96), (64, 64), 8), ((100, 60), (64, 64), 16),
                                                 ((200, 64), (64, 64), 0)])
def test_combining_the_tiles_of_a_picture_gives_it_back(size, tile, overlap):
    picture = _noise_picture(size)
    grid = split_grid(size, *tile, overlap)
    assert np.array_equal(np.asarray(combine_grid(grid, crop_tiles(picture, grid))), np.asarray(picture))


def test_overlap_is_feathered_from_the_left_tile_to_the_right_one():
    grid = split_grid((56, 32), 32, 32, 8)  # columns 0 and 24: 8 shared columns
    combined = np.asarray(combine_grid(grid, [Image.new("RGB", (32, 32), 0), Image.new("RGB", (32, 32), (255,) * 3)]))
    row = combined[5, :, 0].astype(int)
    assert (row[:24] == 0).all() and (row[32:] == 255).all()
    fade = row[24:32]
    assert fade[0] == 0 and all(a < b for a, b in zip(fade, fade[1:])) and fade[-1] < 255
    assert np.abs(fade - np.arange(8) * 255 // 8).max() <= 1  # A1111's ramp: column i of the overlap at i/overlap


@pytest.mark.parametrize("size, settings, expected", [
    ((40, 24), SETTINGS, (80, 48)), ((100, 70), SETTINGS, (200, 136)),  # each side down to a multiple of 8
    ((64, 64), {"scale": 1.5, "upscaler": "Nearest"}, (96, 96)), ((37, 29), {"upscaler": "None", "scale": 3}, (37, 29)),
])
def test_result_size_is_the_init_size_times_the_scale_as_a1111_rounds(size, settings, expected):
    assert upscaled_size(size, SdUpscale(**settings)) == expected


# -- the Recipe part ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, words", [
    ({"sd_upscale": {"overlap": -1}}, "sd_upscale.overlap"), ({"sd_upscale": {"scale": 9}}, "sd_upscale.scale"),
    ({"sd_upscale": {"overlap": 32}, "width": 32, "height": 64}, "sd_upscale.overlap: 32 must be smaller"),
    ({"sd_upscale": {}, "tiling": True}, "tiling"), ({"sd_upscale": {}, "batch_size": 2}, "sd_upscale.batch_size"),
    ({"sd_upscale": {}, "mask": "m.png"}, "takes no mask"), ({"sd_upscale": {"colour": 1}}, "sd_upscale.colour"),
])
def test_bad_sd_upscale_recipes_name_the_field(fields, words):
    with pytest.raises(ValueError, match=words):
        Recipe(init_image="x.png", **fields)


# -- on the engine -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd-upscale")
    write_tiny_checkpoint("sd1", folder / "tiny.safetensors")
    _noise_picture((40, 24)).save(folder / "init.png")
    engine = Engine(ModelStore(allow_paths=True))
    recipe = Recipe(prompt="a red circle", model=str(folder / "tiny.safetensors"), init_image=str(folder / "init.png"),
                    width=32, height=32, steps=4, denoising_strength=0.5, sampler="Euler a", seed=11, batch_count=2,
                    sd_upscale=SETTINGS)
    events = []
    result = engine.run(recipe, on_progress=lambda p: events.append((p.batch, p.step, p.total, p.tile, p.tiles)))
    return folder, engine, recipe, result, events


def _alone(engine: Engine, recipe: Recipe, folder, box, seed: int) -> np.ndarray:
    """One tile of the upscaled picture through a plain img2img recipe."""
    upscaled = Image.open(folder / "init.png").convert("RGB").resize((80, 48), Image.Resampling.LANCZOS)
    upscaled.crop(box).save(folder / f"tile-{seed}.png")
    plain = recipe.model_copy(update={"sd_upscale": None, "batch_count": 1, "seed": seed,
                                      "init_image": str(folder / f"tile-{seed}.png")})
    return np.asarray(engine.run(plain).images[0].image)


def test_the_result_is_the_upscaled_size_one_picture_per_batch(setup):
    _, _, _, result, _ = setup
    assert [(image.image.size, image.seed, image.index) for image in result.images] == [((80, 48), 11, 0), ((80, 48), 12, 1)]
    assert result.recipe.width == 32 and result.recipe.sd_upscale.batch_size == 1


def test_tile_t_is_painted_with_seed_plus_t(setup):
    folder, engine, recipe, result, _ = setup
    picture = np.asarray(result.images[0].image)
    assert tile_seeds(11, 6) == [11, 12, 13, 14, 15, 16]
    grid = split_grid((80, 48), 32, 32, 8)  # columns 0, 24, 48; rows 0, 16
    # Tile 0 up to where tile 1 (x 24) and row 1 (y 16) begin to fade in: nothing blended there.
    assert np.array_equal(picture[:16, :24], _alone(engine, recipe, folder, grid.boxes[0], 11)[:16, :24])
    # Tile 4 (row 1, column 1, at 24,16) past its own fades and up to where tile 5 (x 48) begins.
    tile_4 = _alone(engine, recipe, folder, grid.boxes[4], 15)
    assert np.array_equal(picture[24:48, 32:48], tile_4[8:32, 8:24])
    assert not np.array_equal(picture[24:48, 32:48], _alone(engine, recipe, folder, grid.boxes[4], 11)[8:32, 8:24])


def test_picture_k_is_its_seed_run_alone_and_tile_batches_change_nothing(setup):
    _, engine, recipe, result, _ = setup
    second = engine.run(recipe.model_copy(update={"seed": 12, "batch_count": 1,
                                                  "sd_upscale": SdUpscale(**SETTINGS, batch_size=4)}))
    difference = np.abs(np.asarray(second.images[0].image, dtype=int) - np.asarray(result.images[1].image, dtype=int))
    assert difference.max() <= 1  # batched U-Net sums may differ by a rounding


def test_progress_counts_the_tiles(setup):
    _, _, _, _, events = setup
    for batch in (0, 1):
        mine = [event for event in events if event[0] == batch]
        steps = [step for _, step, _, _, _ in mine]
        assert steps == sorted(steps) and steps[-1] == mine[-1][2] == 6 * 2  # 6 tiles, 2 steps each (4 x 0.5)
        assert sorted({tile for *_, tile, _ in mine}) == list(range(6)) and {tiles for *_, tiles in mine} == {6}


def test_sd_upscale_needs_an_init_image_and_a_known_upscaler(setup):
    _, engine, recipe, _, _ = setup
    with pytest.raises(RecipeError, match="needs an init_image"):
        engine.run(recipe.model_copy(update={"init_image": None}))
    with pytest.raises(RecipeError, match="sd_upscale.upscaler: unknown upscaler 'Bicubic'; choose one of: Lanczos"):
        engine.run(recipe.model_copy(update={"sd_upscale": SdUpscale(upscaler="Bicubic")}))


def test_infotext_round_trip_and_from_png_makes_the_picture_again(setup):
    folder, engine, recipe, result, _ = setup
    image = result.images[1]
    assert "Size: 32x32" in image.infotext  # as A1111: the tile size
    assert "SD upscale overlap: 8, SD upscale upscaler: Lanczos, SD upscale scale: 2" in image.infotext
    parsed, _ = parse_infotext(image.infotext)
    assert parsed.sd_upscale == recipe.sd_upscale and (parsed.seed, parsed.width, parsed.steps) == (12, 32, 4)
    # A1111's own text has no scale: its default.
    a1111 = ("x\nSteps: 3, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Denoising strength: 0.75, "
             "SD upscale overlap: 64, SD upscale upscaler: 4x-UltraSharp, Version: v1.10.1")
    assert parse_infotext(a1111)[0].sd_upscale == SdUpscale(overlap=64, upscaler="4x-UltraSharp", scale=2.0)

    path = save_png(image.image, folder / "made.png", infotext=image.infotext, recipe_json=image.recipe_json)
    again, index = recipe_from_png(path)
    assert index == 1 and again.sd_upscale == recipe.sd_upscale
    again = again.model_copy(update={"model": recipe.model})  # as `--model PATH` next to --from-png does
    remade = engine.run(again, batches=[index // again.batch_size]).images[0]
    assert np.array_equal(np.asarray(remade.image), np.asarray(image.image))


# -- /sdapi/v1 ---------------------------------------------------------------------------------------------

def test_script_args_map_onto_the_recipe():
    def mapped(args, **request):
        request = {"width": 96, "height": 96} | request
        return img2img_recipe(Img2ImgRequest(init_images=["abc"], script_name="SD Upscale", script_args=args, **request),
                              WebuiOptions(), ["Lanczos", "Nearest", "4x-Ultra"])

    recipe = mapped(["", 16, 3, 1.5], batch_size=3, n_iter=2)
    assert recipe.sd_upscale == SdUpscale(overlap=16, upscaler="4x-Ultra", scale=1.5, batch_size=3)
    assert (recipe.batch_size, recipe.batch_count) == (1, 2)  # A1111's batch_size: tiles per pass
    assert mapped(["", 8, "lanczos", 2]).sd_upscale.upscaler == "Lanczos"
    assert mapped(["", 8, 0, 2]).sd_upscale.upscaler == "None"
    assert mapped([]).sd_upscale == SdUpscale()  # A1111's defaults: 64, None, 2
    assert img2img_recipe(Img2ImgRequest(init_images=["abc"]), WebuiOptions()).sd_upscale is None


@pytest.mark.parametrize("args, words", [
    (["", 8, "Bicubic", 2.0], "unknown upscaler 'Bicubic'; choose one of: None, Lanczos, Nearest, 4x-Ultra"),
    (["", 8, 9, 2.0], "index 9 is not one of 0-3"), (["", "big", "Lanczos", 2.0], "script_args[1] (overlap)"),
    (["", 64, "Lanczos", 2.0], "64 must be smaller than the tile size"), (["", 8, "Lanczos", 9], "script_args[3] (scale)"),
    (["", 8, "Lanczos", "2"], "script_args[3] (scale)"), (["", 8, None, 2.0], "script_args[2] (upscaler)"),
    (["", 8, "Lanczos", 2.0, 1], "takes [info, overlap, upscaler, scale]"),
])
def test_bad_script_args_say_what_is_wrong(args, words):
    with pytest.raises(RecipeError) as error:
        img2img_recipe(Img2ImgRequest(init_images=["abc"], script_name="sd upscale", script_args=args, width=64,
                                      height=64), WebuiOptions(), ["Lanczos", "Nearest", "4x-Ultra"])
    assert words in str(error.value)


@pytest.fixture(scope="module")
def client(models_dir, tmp_path_factory):  # noqa: F811
    with make_client(models_dir, tmp_path_factory.mktemp("sd-upscale-api") / "data") as client:
        yield client


def a1111_request() -> dict:
    """A1111's test/test_img2img.py `simple_img2img_request`, as `test_img2img_sd_upscale_performed` sends it."""
    return {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
        "include_init_images": False, "init_images": [base64.b64encode(png_bytes((64, 64))).decode()],
        "inpaint_full_res": False, "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False,
        "mask": None, "mask_blur": 4, "n_iter": 1, "negative_prompt": "", "override_settings": {},
        "prompt": "example prompt", "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0,
        "s_tmin": 0, "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1,
        "steps": 3, "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
        "script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2.0],
    }


def test_a1111_api_test_case(client):
    response = client.post("/sdapi/v1/img2img", json=a1111_request())
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert len(images) == 1
    assert Image.open(io.BytesIO(base64.b64decode(images[0]))).size == (128, 128)
    info = json.loads(response.json()["info"])
    assert info["extra_generation_params"]["SD upscale upscaler"] == "Lanczos"
    assert "SD upscale overlap: 8" in info["infotexts"][0] and "Size: 64x64" in info["infotexts"][0]


def test_scripts_are_listed(client):
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": ["sd upscale"]}
    (script,) = client.get("/sdapi/v1/script-info").json()
    upscaler = script["args"][2]
    assert upscaler["value"] == "None" and upscaler["choices"][:3] == ["None", "Lanczos", "Nearest"]


@pytest.mark.parametrize("route, change, words", [
    ("txt2img", {}, ["script_name", "img2img only"]),
    ("img2img", {"script_name": "x/y/z plot"}, ["x/y/z plot", "img2img runs: sd upscale"]),
    ("img2img", {"script_args": ["", 8, 7, 2.0]}, ["script_args[2] (upscaler)", "0 None, 1 Lanczos, 2 Nearest"]),
    ("img2img", {"script_args": ["", 8, "Bicubic", 2.0]}, ["unknown upscaler 'Bicubic'", "Lanczos, Nearest"]),
    ("img2img", {"script_args": ["", 64, "Lanczos", 2.0]}, ["script_args[1] (overlap)"]),
    ("img2img", {"script_args": ["", 8, "Lanczos", 0.5]}, ["script_args[3] (scale)"]),
    ("img2img", {"mask": data_url(png_bytes((64, 64)))}, ["mask", "SD upscale"]),
])
def test_bad_sd_upscale_requests_are_a_clear_422(client, route, change, words):
    body = a1111_request() | change
    if route == "txt2img":
        body = {key: body[key] for key in ("prompt", "steps", "width", "height", "script_name", "script_args")}
    assert_clean_error(client.post(f"/sdapi/v1/{route}", json=body), 422, *words)


@pytest.mark.parametrize("change, words", [
    ({"script_args": ["", 8, "Lanczos", 4.0]}, ["the SD upscale result is 256x256", "--max-pixels"]),
    ({"script_args": ["", 8, "Lanczos", 2.0], "batch_size": 5}, ["batch_size = 5", "pictures per pass", "--max-batch"]),
])
def test_sd_upscale_is_held_to_the_servers_limits(client, change, words):
    assert_clean_error(client.post("/sdapi/v1/img2img", json=a1111_request() | change), 422, *words)
