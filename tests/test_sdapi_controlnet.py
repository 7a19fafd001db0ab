"""The ControlNet extension's API (sd-webui-controlnet) on a real uvicorn server, driven by `webuiapi` as clients
drive it: units in txt2img/img2img give the Engine's own pictures, the /controlnet routes, and bad units."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import requests
import uvicorn
import webuiapi
from PIL import Image, ImageDraw

from brushwork.control.preprocessors import preprocess
from brushwork.engine.engine import Engine
from brushwork.models.store import ModelStore
from brushwork.recipe import ControlUnit, Recipe
from brushwork.serve.app import create_app
from brushwork.serve.settings import Settings
from test_api import TEST_LIMITS
from test_sdapi import free_port
from tiny_controls import write_tiny_controlnet
from tiny_models import write_tiny_checkpoint

AUTH = ("ann", "pw")
SIZE = 32
GENERATION = {"prompt": "a red circle on a blue background", "seed": 7, "cfg_scale": 6.0, "width": SIZE,
              "height": SIZE}


def old_hash(path: Path) -> str:
    """A1111's sd_models.model_hash, written out here independently of brushwork's."""
    with open(path, "rb") as handle:
        handle.seek(0x100000)
        return hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "Stable-diffusion").mkdir()
    (root / "ControlNet").mkdir()
    write_tiny_checkpoint("sd1", root / "Stable-diffusion" / "tiny.safetensors")
    write_tiny_controlnet(root / "ControlNet" / "blobs.safetensors", family="sd1", layout="original", seed=2)
    write_tiny_controlnet(root / "ControlNet" / "edges", family="sd1", layout="folder", seed=1)
    return root


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory) -> Iterator[str]:
    """uvicorn on 127.0.0.1 in a thread, with basic auth; yields its address."""
    data = tmp_path_factory.mktemp("controlnet") / "data"
    settings = Settings(models_dir=models_dir, data_dir=data, basic_auth=dict([AUTH]), limits=TEST_LIMITS)
    app = create_app(settings, store=ModelStore(models_dir, hash_cache=data.parent / "hashes.json"))
    port = free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uvicorn_server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def api(server) -> webuiapi.WebUIApi:
    port = int(server.rsplit(":", 1)[1])
    return webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler", steps=2, username=AUTH[0], password=AUTH[1])


def drawing(size=(SIZE, SIZE)) -> Image.Image:
    image = Image.new("RGB", size, "black")
    ImageDraw.Draw(image).rectangle((4, 6, size[0] - 8, size[1] - 5), outline="white", width=2)
    return image


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_txt2img_unit_paints_the_engines_picture_and_answers_its_detected_map(api, models_dir):
    blobs = next(title for title in api.controlnet_model_list() if title.startswith("blobs ["))
    unit = webuiapi.ControlNetUnit(image=drawing(), module="canny", model=blobs, weight=1.5, processor_res=64,
                                   threshold_a=50, threshold_b=150, resize_mode="Just Resize", control_mode=1)
    result = api.txt2img(**GENERATION, controlnet_units=[unit], alwayson_scripts={})
    assert [image.size for image in result.images] == [(SIZE, SIZE), (SIZE, SIZE)]  # the picture, then the map

    engine = Engine(ModelStore(models_dir))
    ours = ControlUnit(model="blobs", image="data:image/png;base64," + b64(drawing()), module="canny", weight=1.5,
                       processor_res=64, threshold_a=50, threshold_b=150, resize_mode="Just Resize",
                       control_mode="My prompt is more important")
    recipe = Recipe(**GENERATION, sampler="Euler", steps=2, control_units=[ours])
    made = engine.run(recipe).images[0]
    assert np.array_equal(pixels(result.images[0]), pixels(made.image))
    assert result.info["infotexts"] == [made.infotext]
    assert result.info["extra_generation_params"]["ControlNet 0"].startswith(f"Module: canny, Model: {blobs}, ")
    assert (f'ControlNet 0: "Module: canny, Model: {blobs}, Weight: 1.5, Resize Mode: Just Resize, Processor Res: 64, '
            "Threshold A: 50, Threshold B: 150, Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, "
            'Control Mode: My prompt is more important"') in made.infotext
    detected = engine.controls.detect(ours, drawing(), SIZE, SIZE)
    assert np.array_equal(pixels(result.images[1]), pixels(detected))

    plain = engine.run(recipe.model_copy(update={"control_units": []})).images[0].image
    assert np.abs(pixels(made.image) - pixels(plain)).max() > 5  # the unit changed the picture (2 steps, soft injection)


def test_disabled_units_and_units_without_a_model_paint_as_none(api):
    # A fresh alwayson_scripts each call: webuiapi adds the units to its default dict, which every later call shares.
    plain = api.txt2img(**GENERATION, alwayson_scripts={})
    skipped = [webuiapi.ControlNetUnit(image=drawing(), module="canny", model="blobs", enabled=False),
               webuiapi.ControlNetUnit(image=drawing(), module="canny", model="None")]
    result = api.txt2img(**GENERATION, controlnet_units=skipped, alwayson_scripts={})
    assert len(result.images) == 1 and np.array_equal(pixels(result.images[0]), pixels(plain.image))
    assert "ControlNet" not in result.info["infotexts"][0]


def test_img2img_unit_without_a_picture_uses_the_init_image(api, server):
    init = drawing()
    unit = {"module": "none", "model": "edges", "weight": 0.5, "processor_res": 64, "save_detected_map": False,
            "low_vram": True, "guessmode": False, "hr_option": "Both"}
    body = {**GENERATION, "steps": 2, "sampler_name": "Euler", "init_images": [b64(init)], "denoising_strength": 0.6,
            "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    answer = requests.post(f"{server}/sdapi/v1/img2img", json=body, auth=AUTH, timeout=120)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["images"]) == 1  # save_detected_map: false
    assert 'ControlNet 0: "Module: none, Model: edges [' in json.loads(answer.json()["info"])["infotexts"][0]


def test_routes_answer_as_the_extension(api, server, models_dir):
    assert api.controlnet_version() == 2
    folder_weights = models_dir / "ControlNet" / "edges" / "diffusion_pytorch_model.safetensors"
    # The folder's models, then any the embedded model ships.
    assert api.controlnet_model_list()[:2] == [f"blobs [{old_hash(models_dir / 'ControlNet' / 'blobs.safetensors')}]",
                                               f"edges [{old_hash(folder_weights)}]"]
    listed = requests.get(f"{server}/controlnet/module_list", auth=AUTH, timeout=30).json()
    assert "canny" in listed["module_list"] and "invert" in listed["module_list"]
    assert listed["module_detail"]["canny"] == {"model_free": False, "sliders": [
        {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1}]}
    assert listed["module_detail"]["invert"]["sliders"] == []
    aliases = requests.get(f"{server}/controlnet/module_list", params={"alias_names": "true"}, auth=AUTH, timeout=30)
    assert "invert (from white bg & black line)" in aliases.json()["module_list"]
    assert requests.get(f"{server}/controlnet/settings", auth=AUTH, timeout=30).json() == {"control_net_unit_count": 8}
    assert requests.get(f"{server}/controlnet/version", timeout=30).status_code == 401


def test_detect_gives_the_modules_map_at_the_processor_resolution(api, server):
    picture = drawing((96, 64))
    wanted = preprocess("canny", picture, 48, 100, 200)
    assert wanted.size == (72, 48)  # short side at the resolution
    result = api.controlnet_detect([picture], module="canny", processor_res=48, threshold_a=100, threshold_b=200)
    edges = pixels(result.image)
    assert result.image.size == (72, 48) and np.array_equal(edges, pixels(wanted))
    assert set(np.unique(edges)) == {0, 255}  # an edge map
    body = {"controlnet_module": "canny", "controlnet_input_images": [b64(picture)], "controlnet_processor_res": 48,
            "controlnet_masks": [b64(picture)]}
    answer = requests.post(f"{server}/controlnet/detect", json=body, auth=AUTH, timeout=60).json()
    assert answer["info"] == "Success" and np.array_equal(pixels(Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))), edges)


def unit(**fields) -> dict:
    return {"input_image": b64(drawing()), "module": "canny", "model": "blobs", "processor_res": 64} | fields


@pytest.mark.parametrize("path, body, status, words", [
    ("txt2img", {"args": [unit(model="nothing")]}, 422, ["args[0].model", "not found", "blobs.safetensors"]),
    ("txt2img", {"args": [unit(enabled=False, weight=9), unit(weight=5)]}, 422, ["args[1].weight"]),
    ("txt2img", {"args": [unit(module="sobel")]}, 422, ["args[0].module", "'sobel' is unknown"]),
    ("txt2img", {"args": [unit(threshold_a=999)]}, 422, ["args[0].threshold_a", "1..255"]),
    ("txt2img", {"args": [unit(control_mode=7)]}, 422, ["args[0].control_mode"]),
    ("txt2img", {"args": [unit(resize_mode="Squash")]}, 422, ["args[0].resize_mode", "unknown resize mode"]),
    ("txt2img", {"args": [unit(guidance_start=0.9, guidance_end=0.1)]}, 422, ["args[0]", "guidance_start"]),
    ("txt2img", {"args": [unit(mask=b64(drawing()))]}, 422, ["args[0].mask", "not supported"]),
    ("txt2img", {"args": [unit(input_image={"image": b64(drawing()), "mask": b64(drawing())})]}, 422,
     ["args[0].image.mask"]),
    ("txt2img", {"args": [unit(input_image="")]}, 422, ["args[0].image", "give the unit a picture"]),
    ("txt2img", {"args": [unit(input_image="/etc/passwd")]}, 422, ["args[0].image", "not valid base64"]),
    ("txt2img", {"args": [unit(input_image="A" * 100_000)]}, 413, ["args[0].image", "upload limit"]),
    ("txt2img", {"args": [unit(input_image=b64(drawing()), image=b64(drawing()))]}, 422, ["image or its old name"]),
    ("txt2img", {"args": [unit(input_image=b64(drawing((256, 16))))]}, 422,
     ["args[0].processor_res", "1024x64 picture", "--max-image-side"]),
    ("txt2img", {"args": [unit(input_image=b64(drawing((256, 16))), pixel_perfect=True)]}, 422,
     ["args[0].pixel_perfect", "--max-image-side"]),
    ("txt2img", {"args": [unit(enabled="yes")]}, 422, ["args[0].enabled"]),
    ("txt2img", {"args": [[True, "canny", "blobs", 1.0]]}, 422, ["args[0]", "positional"]),
    ("txt2img", {"args": [unit()] * 9}, 422, ["alwayson_scripts.controlnet.args", "at most 8"]),
    ("img2img", {"args": [unit()]}, 422, ["args[0]", "only masked", "inpaint_full_res"]),
])
def test_bad_units_name_the_field(server, path, body, status, words):
    request = {**GENERATION, "steps": 2, "alwayson_scripts": {"ControlNet": body}}
    if path == "img2img":
        request |= {"init_images": [b64(drawing())], "mask": b64(drawing())}  # only-masked inpainting
    answer = requests.post(f"{server}/sdapi/v1/{path}", json=request, auth=AUTH, timeout=60)
    assert answer.status_code == status, answer.text
    for word in words:
        assert word in answer.json()["detail"], (word, answer.text)


def test_hires_fix_takes_units_for_both_passes_only(server):
    request = {**GENERATION, "steps": 2, "enable_hr": True, "hr_scale": 2, "denoising_strength": 0.5,
               "alwayson_scripts": {"controlnet": {"args": [unit(hr_option="Both", pixel_perfect=True)]}}}
    answer = requests.post(f"{server}/sdapi/v1/txt2img", json=request, auth=AUTH, timeout=120)
    assert answer.status_code == 200, answer.text
    sizes = [Image.open(io.BytesIO(base64.b64decode(image))).size for image in answer.json()["images"]]
    assert sizes == [(2 * SIZE, 2 * SIZE), (SIZE, SIZE)]  # the hires picture, then the map of the first pass
    request["alwayson_scripts"]["controlnet"]["args"][0]["hr_option"] = "Low res only"
    answer = requests.post(f"{server}/sdapi/v1/txt2img", json=request, auth=AUTH, timeout=60)
    assert answer.status_code == 422 and "args[0].hr_option" in answer.json()["detail"]


def test_other_alwayson_scripts_stay_refused(server):
    request = {**GENERATION, "alwayson_scripts": {"ADetailer": {"args": [{"ad_model": "face_yolov8n.pt"}]}}}
    answer = requests.post(f"{server}/sdapi/v1/txt2img", json=request, auth=AUTH, timeout=60)
    assert answer.status_code == 422 and "alwayson_scripts (ADetailer)" in answer.json()["detail"]


@pytest.mark.parametrize("body, words", [
    ({"controlnet_module": "sobel", "controlnet_input_images": ["x"]}, ["controlnet_module"]),
    ({"controlnet_module": "canny", "controlnet_input_images": []}, ["controlnet_input_images", "no image"]),
    ({"controlnet_module": "canny", "controlnet_input_images": ["%%%"]}, ["controlnet_input_images[0]", "base64"]),
    ({"controlnet_module": "canny", "controlnet_threshold_a": 300}, ["controlnet_threshold_a", "1..255"]),
    ({"controlnet_module": "canny", "controlnet_processor_res": 2}, ["controlnet_processor_res", "8..4096"]),
    ({"controlnet_module": "canny", "controlnet_processor_res": 1024}, ["controlnet_processor_res", "--max-image-side"]),
    ({"controlnet_module": "canny", "controlnet_input_images": [b64(drawing())] * 5}, ["--max-batch"]),
    ({"controlnet_module": "depth_midas", "controlnet_processor_res": 64}, ["depth_midas", "dpt_hybrid-midas"]),
])
def test_bad_detect_requests_get_a_clear_422(server, body, words):
    body = {"controlnet_input_images": [b64(drawing())]} | body
    answer = requests.post(f"{server}/controlnet/detect", json=body, auth=AUTH, timeout=60)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert all(word in detail for word in words) and "Traceback" not in detail, detail
