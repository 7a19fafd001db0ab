"""What AUTOMATIC1111's own API tests (`test/` of v1.10: test_txt2img.py, test_img2img.py, test_extras.py,
test_utils.py) ask, asked of a real `brushwork serve` process painting with the embedded model and no models
folder. Their requests are sent field for field; where A1111 needs a face-restoration weight the user has not
placed, the answer is a 422 naming the file and the folder to put it in.

Also here: /sdapi/v1/server-restart re-executes the process with the same command line."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from test_serve_process import free_port, serve


def picture_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def init_image() -> str:
    """Like A1111's test_files/img2img_basic.png: a picture larger than the 64x64 asked for."""
    image = Image.new("RGB", (96, 96), (40, 60, 160))
    ImageDraw.Draw(image).ellipse((20, 20, 76, 76), fill=(220, 40, 40))
    return picture_data_url(image)


@pytest.fixture(scope="module")
def mask_image() -> str:
    """Like A1111's test_files/mask_basic.png: white where to repaint."""
    image = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(image).rectangle((30, 30, 66, 66), fill=255)
    return picture_data_url(image)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("a1111-suite")
    port = free_port()
    with serve(None, root / "data", port, root / "server.log"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture()
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


@pytest.fixture()
def txt2img_request() -> dict:
    """test_txt2img.py's simple_txt2img_request."""
    return {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0,
        "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "",
        "prompt": "example prompt", "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
        "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    }


@pytest.fixture()
def img2img_request(init_image) -> dict:
    """test_img2img.py's simple_img2img_request."""
    return {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
        "include_init_images": False, "init_images": [init_image], "inpaint_full_res": False,
        "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None,
        "mask_blur": 4, "n_iter": 1, "negative_prompt": "", "override_settings": {}, "prompt": "example prompt",
        "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
        "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    }


def pictures(response: httpx.Response, count: int, size: tuple[int, int]) -> list[Image.Image]:
    """The answer's pictures, checked: `count` PNGs of `size`, each with its infotext."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == count, len(body["images"])
    decoded = [Image.open(io.BytesIO(base64.b64decode(image))) for image in body["images"]]
    for image in decoded:
        assert image.format == "PNG" and image.size == size
        assert "Steps: " in image.info["parameters"]
    assert isinstance(body["parameters"], dict) and isinstance(body["info"], str)
    return decoded


TXT2IMG_CASES = {
    "simple": ({}, 1, (64, 64)),
    "negative-prompt": ({"negative_prompt": "example negative prompt"}, 1, (64, 64)),
    "complex-prompt": ({"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"},
                       1, (64, 64)),
    "not-square": ({"height": 128}, 1, (64, 128)),
    "hires-fix": ({"enable_hr": True}, 1, (128, 128)),  # hr_scale defaults to 2
    "tiling": ({"tiling": True}, 1, (64, 64)),
    "sampler-PLMS": ({"sampler_index": "PLMS"}, 1, (64, 64)),
    "sampler-DDIM": ({"sampler_index": "DDIM"}, 1, (64, 64)),
    "sampler-UniPC": ({"sampler_index": "UniPC"}, 1, (64, 64)),
    "two-batches": ({"n_iter": 2}, 2, (64, 64)),
    "batch-of-two": ({"batch_size": 2}, 2, (64, 64)),
}


@pytest.mark.parametrize("change, count, size", TXT2IMG_CASES.values(), ids=TXT2IMG_CASES.keys())
def test_txt2img(http, txt2img_request, change, count, size):
    pictures(http.post("/sdapi/v1/txt2img", json=txt2img_request | change), count, size)


def test_txt2img_restore_faces_without_weights_names_the_file(http, txt2img_request):
    response = http.post("/sdapi/v1/txt2img", json=txt2img_request | {"restore_faces": True})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "codeformer" in detail.lower() and ".pth" in detail and "Codeformer" in detail, detail  # file and folder
    assert "Traceback" not in detail


IMG2IMG_CASES = {
    "simple": {},
    "inpainting": {"mask": "MASK"},
    "inpainting-inverted-mask": {"mask": "MASK", "inpainting_mask_invert": True},
}


@pytest.mark.parametrize("change", IMG2IMG_CASES.values(), ids=IMG2IMG_CASES.keys())
def test_img2img(http, img2img_request, mask_image, change):
    request = img2img_request | {key: mask_image if value == "MASK" else value for key, value in change.items()}
    pictures(http.post("/sdapi/v1/img2img", json=request), 1, (64, 64))


def test_img2img_sd_upscale(http, img2img_request):
    request = img2img_request | {"script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2.0]}
    # As A1111's script: the init picture as sent (96x96), not resized to width x height, is upscaled by 2.
    pictures(http.post("/sdapi/v1/img2img", json=request), 1, (192, 192))


def test_extras_simple_upscaling(http, init_image):
    request = {
        "resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0, "codeformer_visibility": 0,
        "codeformer_weight": 0, "upscaling_resize": 2, "upscaling_resize_w": 128, "upscaling_resize_h": 128,
        "upscaling_crop": True, "upscaler_1": "Lanczos", "upscaler_2": "None", "extras_upscaler_2_visibility": 0,
        "image": init_image,
    }
    response = http.post("/sdapi/v1/extra-single-image", json=request)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["image"])))
    assert image.size == (192, 192)  # resize_mode 0: by upscaling_resize


@pytest.mark.parametrize("extra", [{}, {"model": "clip"}], ids=["png-info", "interrogate"])
def test_extras_with_only_an_image(http, init_image, extra):
    """A1111's test_png_info_performed and test_interrogate_performed post these to extra-single-image: the
    defaults (upscale by 2 with no upscaler) give back the picture as it is."""
    response = http.post("/sdapi/v1/extra-single-image", json={"image": init_image} | extra)
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(base64.b64decode(response.json()["image"]))).size == (96, 96)


def test_options_write(http):
    before = http.get("/sdapi/v1/options")
    assert before.status_code == 200
    value = before.json()["send_seed"]
    assert http.post("/sdapi/v1/options", json={"send_seed": not value}).status_code == 200
    assert http.get("/sdapi/v1/options").json()["send_seed"] is (not value)
    assert http.post("/sdapi/v1/options", json={"send_seed": value}).status_code == 200


@pytest.mark.parametrize("route", ["cmd-flags", "samplers", "upscalers", "sd-models", "hypernetworks",
                                   "face-restorers", "realesrgan-models", "prompt-styles", "embeddings"])
def test_get_api_url(http, route):
    response = http.get(f"/sdapi/v1/{route}")
    assert response.status_code == 200, response.text
    assert isinstance(response.json(), (list, dict))


def test_server_restart_runs_the_same_command_again(tmp_path):
    """/sdapi/v1/server-restart (with --api-server-stop): the process answers, stops gracefully, re-executes
    itself (same pid, as os.execv keeps it) and answers again with the same data folder."""
    port, log = free_port(), tmp_path / "server.log"
    with serve(None, tmp_path / "data", port, log, "--api-server-stop") as process:
        url = f"http://127.0.0.1:{port}"
        made = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "before", "steps": 1, "seed": 5}, timeout=60)
        assert made.status_code == 200, made.text
        assert httpx.post(f"{url}/sdapi/v1/server-restart", timeout=10).status_code == 200
        down, deadline = False, time.monotonic() + 120
        while True:
            assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"did not come back:\n{log.read_text()[-3000:]}"
            try:
                httpx.get(f"{url}/sdapi/v1/progress", timeout=2)
                if down:
                    break
            except httpx.TransportError:
                down = True
            time.sleep(0.2)
        assert log.read_text().count("Uvicorn running on") == 2
        gallery = httpx.get(f"{url}/api/v1/gallery", timeout=10).json()["images"]
        assert [image["seed"] for image in gallery] == [5]  # the same data folder
