"""A1111's `/sdapi/v1` on the real JobQueue: the payload adapter, every route, bad input, and a `webuiapi`
round trip against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
import uvicorn
import webuiapi
from PIL import Image

from brushwork.errors import RecipeError
from brushwork.recipe import Recipe
from brushwork.serve.jobs import ImageRecord, Job, JobState
from brushwork.models.store import ModelStore
from brushwork.serve.api.sdapi_adapter import (
    img2img_recipe,
    info_json,
    png_info_parameters,
    sampler_name,
    txt2img_recipe,
)
from brushwork.serve.api.sdapi_schemas import Img2ImgRequest, Txt2ImgRequest
from brushwork.serve.app import create_app
from brushwork.serve.deps import WebuiOptions
from brushwork.serve.settings import Settings
from test_api import TEST_LIMITS, assert_clean_error, assert_png, data_url, make_client, models_dir, png_bytes  # noqa: F401

FAST = {"steps": 2, "width": 32, "height": 32}


@pytest.fixture(scope="module")
def client(models_dir, tmp_path_factory):  # noqa: F811
    with make_client(models_dir, tmp_path_factory.mktemp("sdapi") / "data") as client:
        yield client


# -- the adapter -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, scheduler, expected", [
    (None, None, "Euler"), ("euler a", None, "Euler a"), ("k_dpmpp_2m_ka", None, "DPM++ 2M Karras"),
    ("DPM++ 2M", "Karras", "DPM++ 2M Karras"), ("DPM++ 2M", "automatic", "DPM++ 2M"),
    ("DPM++ 2M Karras", "karras", "DPM++ 2M Karras"), ("DDIM", "Uniform", "DDIM"),
])
def test_sampler_names_aliases_and_schedule_types(name, scheduler, expected):
    assert sampler_name(name, scheduler) == expected


@pytest.mark.parametrize("name, scheduler, words", [
    ("Euler z", None, "unknown sampler"), ("Euler", "Exponential", "Automatic, Uniform, Karras"),
    ("Euler a", "Karras", "no Karras variant"),
])
def test_bad_sampler_names_say_what_works(name, scheduler, words):
    with pytest.raises(RecipeError, match=words):
        sampler_name(name, scheduler)


def test_txt2img_payload_maps_onto_a_recipe():
    request = Txt2ImgRequest(
        prompt="a fox", negative_prompt="blurry", seed=5, sampler_name="DPM++ 2M", scheduler="Karras", steps=12,
        cfg_scale=5.5, width=64, height=96, batch_size=2, n_iter=3, enable_hr=True, hr_scale=1.5,
        hr_upscaler="Latent (bicubic)", hr_second_pass_steps=4, denoising_strength=0.4, hr_prompt="sharp fox",
        hr_sampler_name="Euler", override_settings={"sd_model_checkpoint": "tiny.safetensors [abc]",
                                                    "CLIP_stop_at_last_layers": 2, "sd_vae": "Automatic"},
        some_future_field={"ignored": True},
    )
    recipe = txt2img_recipe(request, WebuiOptions(checkpoint="other.safetensors"))
    assert (recipe.prompt, recipe.negative_prompt, recipe.seed, recipe.sampler) == ("a fox", "blurry", 5, "DPM++ 2M Karras")
    assert (recipe.steps, recipe.cfg_scale, recipe.width, recipe.height) == (12, 5.5, 64, 96)
    assert (recipe.batch_size, recipe.batch_count, recipe.clip_skip) == (2, 3, 2)
    assert recipe.model == "tiny.safetensors [abc]" and recipe.vae is None
    hires = recipe.hires
    assert (hires.scale, hires.upscaler, hires.steps, hires.denoising_strength) == (1.5, "Latent (bicubic)", 4, 0.4)
    assert (hires.prompt, hires.negative_prompt, hires.sampler) == ("sharp fox", None, "Euler")

    plain = txt2img_recipe(Txt2ImgRequest(prompt="x"), WebuiOptions(checkpoint="other.safetensors", clip_skip=2))
    assert (plain.sampler, plain.steps, plain.width, plain.hires, plain.model, plain.clip_skip) == (
        "Euler", 50, 512, None, "other.safetensors", 2)
    sized = txt2img_recipe(Txt2ImgRequest(enable_hr=True, hr_scale=1, hr_resize_x=1024), WebuiOptions())
    assert (sized.hires.resize_width, sized.hires.resize_height, sized.hires.denoising_strength) == (1024, 0, 0.7)


def test_img2img_payload_maps_onto_a_recipe():
    request = Img2ImgRequest(init_images=["abc"], mask="def", resize_mode=2, denoising_strength=0.3, mask_blur=8,
                             inpainting_fill=2, inpaint_full_res=0, inpaint_full_res_padding=16,
                             inpainting_mask_invert=1, width=64, height=64)
    recipe = img2img_recipe(request, WebuiOptions())
    assert (recipe.init_image, recipe.mask, recipe.resize_mode, recipe.denoising_strength) == ("abc", "def", "resize and fill", 0.3)
    assert (recipe.mask_blur, recipe.inpainting_fill, recipe.inpaint_full_res) == (8, "latent noise", False)
    assert (recipe.inpaint_full_res_padding, recipe.inpainting_mask_invert) == (16, True)
    assert img2img_recipe(Img2ImgRequest(init_images=["abc"], resize_mode=3), WebuiOptions()).resize_mode == "just resize"


@pytest.mark.parametrize("request_fields, words", [
    ({"subseed_strength": 0.5}, "subseed_strength"), ({"script_name": "x/y/z plot"}, "script_name"),
    ({"enable_hr": True, "hr_checkpoint_name": "other"}, "hr_checkpoint_name"),
    ({"alwayson_scripts": {"ADetailer": {"args": [{"ad_model": "face_yolov8n.pt"}]}}}, "ADetailer"),
    ({"n_iter": 0}, "n_iter:"), ({"sampler_name": "nope"}, "sampler_name"), ({"width": 0}, "width"),
    ({"enable_hr": True, "hr_scale": 9}, "hr_scale:"), ({"override_settings": {"CLIP_stop_at_last_layers": 40}},
                                                        "override_settings.CLIP_stop_at_last_layers"),
])
def test_unsupported_or_bad_txt2img_values_name_the_a1111_field(request_fields, words):
    with pytest.raises(RecipeError, match=words.replace("(", r"\(")):
        txt2img_recipe(Txt2ImgRequest(**request_fields), WebuiOptions())


@pytest.mark.parametrize("request_fields, words", [
    ({"init_images": []}, "exactly one"), ({"init_images": ["a", "b"]}, "exactly one"),
    ({"init_images": ["a"], "resize_mode": 7}, "resize_mode"), ({"init_images": ["a"], "mask": "m", "inpainting_fill": 9}, "inpainting_fill"),
    ({"init_images": ["a"], "mask": "m", "mask_blur_x": 2, "mask_blur_y": 9}, "mask_blur"),
    ({"init_images": ["a"], "inpainting_mask_invert": 5}, "inpainting_mask_invert"),
])
def test_bad_img2img_values_name_the_a1111_field(request_fields, words):
    with pytest.raises(RecipeError, match=words):
        img2img_recipe(Img2ImgRequest(**request_fields), WebuiOptions())


def test_png_info_parameters_split_sizes_as_a1111():
    parsed = png_info_parameters("a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Size: 512x768, Hires resize: 1024x1536")
    assert parsed["Prompt"] == "a cat" and parsed["Negative prompt"] == "dog" and parsed["Steps"] == "20"
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Hires resize-1"]) == ("512", "768", "1024")
    assert "Size" not in parsed


def test_info_json_carries_a1111_keys():
    created = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    infotext = "p\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: {}, Size: 32x32, Model hash: abc, Model: tiny"
    images = [ImageRecord(id=f"i{n}", job_id="j", path=f"{n}.png", seed=3 + n, width=32, height=32,
                          infotext=infotext.format(3 + n), created=created) for n in range(2)]
    job = Job(id="j", owner="o", recipe=Recipe(prompt="p", seed=3, batch_size=2, sampler="Euler", steps=2),
              state=JobState.done, created=created, images=images)
    info = json.loads(info_json(job))
    assert {"prompt", "all_prompts", "seed", "all_seeds", "infotexts", "width", "height", "sampler_name", "cfg_scale",
            "steps", "batch_size", "sd_model_name", "sd_model_hash", "job_timestamp", "clip_skip", "version"} <= set(info)
    assert (info["seed"], info["all_seeds"], info["sd_model_hash"], info["job_timestamp"]) == (3, [3, 4], "abc", "20240506070809")


# -- routes ----------------------------------------------------------------------------------------------

def test_txt2img_answers_like_a1111(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "seed": 11, "batch_size": 2,
                                                      "sampler_name": "Euler a", **FAST, "unknown_field": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 2
    pictures = [assert_png(base64.b64decode(image), (32, 32)) for image in body["images"]]
    info = json.loads(body["info"])
    assert info["all_seeds"] == [11, 12] and info["seed"] == 11 and info["sampler_name"] == "Euler a"
    assert info["prompt"] == "a fox" and info["all_prompts"] == ["a fox", "a fox"] and (info["width"], info["height"]) == (32, 32)
    assert info["sd_model_name"] == "more/second" and len(info["infotexts"]) == 2 and "Seed: 12" in info["infotexts"][1]
    assert pictures[1].info["parameters"] == info["infotexts"][1]
    assert body["parameters"]["prompt"] == "a fox" and body["parameters"]["n_iter"] == 1
    assert "unknown_field" not in body["parameters"]

    quiet = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "send_images": False, **FAST}).json()
    assert quiet["images"] == [] and json.loads(quiet["info"])["infotexts"]


def test_txt2img_with_hires_fix(client):
    body = client.post("/sdapi/v1/txt2img", json={"prompt": "hires", "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent",
                                                  "hr_second_pass_steps": 1, "denoising_strength": 0.5, **FAST}).json()
    assert_png(base64.b64decode(body["images"][0]), (64, 64))
    assert "Hires upscaler: Latent" in json.loads(body["info"])["infotexts"][0]


def test_txt2img_with_hires_fix_through_an_image_upscaler(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "hires", "enable_hr": True, "hr_scale": 2,
                                                      "hr_upscaler": "Lanczos", "denoising_strength": 0.5, **FAST})
    assert response.status_code == 200, response.text
    assert_png(base64.b64decode(response.json()["images"][0]), (64, 64))


def test_img2img_and_inpainting(client):
    source = data_url(png_bytes((48, 40)))
    body = client.post("/sdapi/v1/img2img", json={"init_images": [source], "denoising_strength": 0.5, **FAST}).json()
    assert_png(base64.b64decode(body["images"][0]), (32, 32))
    assert body["parameters"]["init_images"] is None and json.loads(body["info"])["denoising_strength"] == 0.5

    mask = data_url(png_bytes((48, 40), color=(255, 255, 255)))
    response = client.post("/sdapi/v1/img2img", json={
        "init_images": [base64.b64encode(png_bytes((32, 32))).decode()], "mask": mask, "inpainting_fill": 1,
        "inpaint_full_res": 0, "include_init_images": True, **FAST})
    assert response.status_code == 200, response.text
    assert response.json()["parameters"]["mask"] == mask
    assert "Mask blur: 4" in json.loads(response.json()["info"])["infotexts"][0]


def test_options_switch_the_default_model(client):
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"].startswith("more/second.safetensors [")
    assert (options["sd_vae"], options["CLIP_stop_at_last_layers"], options["samples_format"]) == ("Automatic", 1, "png")
    titles = [model["title"] for model in client.get("/sdapi/v1/sd-models").json()]
    tiny = next(title for title in titles if title.startswith("tiny"))
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": tiny, "some_ui_option": 3}).status_code == 200
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == tiny and options["some_ui_option"] == 3
    info = json.loads(client.post("/sdapi/v1/txt2img", json={"prompt": "x", **FAST}).json()["info"])
    assert info["sd_model_name"] == "tiny"
    override = {"prompt": "x", **FAST, "override_settings": {"sd_model_checkpoint": "more/second"}}
    assert json.loads(client.post("/sdapi/v1/txt2img", json=override).json()["info"])["sd_model_name"] == "more/second"

    assert_clean_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"}), 422, "not found", "tiny.safetensors")
    assert_clean_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": 5}), 422, "sd_model_checkpoint")
    assert_clean_error(client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 0}), 422, "1 to 12")
    assert_clean_error(client.post("/sdapi/v1/options", json={"sd_vae": "missing.pt"}), 422, "not found")
    assert_clean_error(client.post("/sdapi/v1/options", json={"samples_format": "bmp"}), 422, "png, jpg")
    assert client.post("/sdapi/v1/options", json=[1, 2]).status_code == 422
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == tiny  # nothing half-applied
    client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "more/second.safetensors"})


def test_listings(client):
    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["more_second", "tiny", "brushwork-shapes"]
    assert all(m["title"] == f"{relative_name(m)} [{m['hash']}]" and len(m["sha256"]) == 64 for m in models)
    assert client.get("/sdapi/v1/sd-vae").json() == []
    samplers = client.get("/sdapi/v1/samplers").json()
    assert {"name": "Euler a", "aliases": ["k_euler_a", "k_euler_ancestral"], "options": {}} in samplers
    assert [s["name"] for s in client.get("/sdapi/v1/schedulers").json()] == ["automatic", "uniform", "karras"]
    assert [u["name"] for u in client.get("/sdapi/v1/upscalers").json()][:3] == ["None", "Lanczos", "Nearest"]
    modes = [m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes[0] == "Latent" and "Latent (nearest-exact)" in modes
    loras = client.get("/sdapi/v1/loras").json()
    assert [(lora["name"], lora["alias"]) for lora in loras] == [("ink-style", "ink-style")]
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": ["sd upscale"]}
    for path in ("refresh-checkpoints", "refresh-vae", "refresh-loras", "refresh-embeddings"):
        assert client.post(f"/sdapi/v1/{path}").status_code == 200


def relative_name(model: dict) -> str:
    folder, _, below = model["filename"].partition("Stable-diffusion/")
    return below or Path(folder).name  # the embedded model lies outside the models folder


def test_progress_interrupt_and_skip_when_idle(client):
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    assert client.post("/sdapi/v1/interrupt").json() == {}
    assert client.post("/sdapi/v1/skip").json() == {}


def test_png_info_and_extras(client):
    body = client.post("/sdapi/v1/txt2img", json={"prompt": "a heron", "negative_prompt": "fog", "seed": 4, **FAST}).json()
    info = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + body["images"][0]}).json()
    assert info["info"].startswith("a heron\nNegative prompt: fog\n")
    assert info["parameters"]["Seed"] == "4" and info["parameters"]["Size-1"] == "32" and "brushwork" in info["items"]
    assert client.post("/sdapi/v1/png-info", json={"image": ""}).json()["info"] == ""
    assert client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(png_bytes()).decode()}).json()["info"] == ""

    image = body["images"][0]
    extras = client.post("/sdapi/v1/extra-single-image", json={"image": image, "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert extras.status_code == 200, extras.text
    assert_png(base64.b64decode(extras.json()["image"]), (64, 64))
    assert "Postprocess upscaler: Lanczos" in extras.json()["html_info"]
    to_size = client.post("/sdapi/v1/extra-single-image", json={
        "image": image, "resize_mode": 1, "upscaling_resize_w": 96, "upscaling_resize_h": 48, "upscaler_1": "Nearest",
        "upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 0.5, "upscaling_crop": False}).json()
    assert_png(base64.b64decode(to_size["image"]), (96, 48))
    unchanged = client.post("/sdapi/v1/extra-single-image", json={"image": image}).json()
    assert_png(base64.b64decode(unchanged["image"]), (32, 32))


@pytest.mark.parametrize("path, payload, status, words", [
    ("txt2img", {"steps": "lots"}, 422, ["steps"]),
    ("txt2img", {"width": -32, "height": 32, "steps": 2}, 422, ["width"]),
    ("txt2img", {"steps": 10**40, **{k: v for k, v in FAST.items() if k != "steps"}}, 422, ["steps"]),
    ("txt2img", {**FAST, "steps": 61}, 422, ["--max-steps"]),
    ("txt2img", {**FAST, "batch_size": 5}, 422, ["--max-batch"]),
    ("txt2img", {"steps": 2, "width": 512, "height": 512}, 422, ["--max-pixels"]),
    ("txt2img", {**FAST, "sampler_name": "Bogus"}, 422, ["sampler_name", "unknown sampler"]),
    ("txt2img", {**FAST, "override_settings": {"sd_model_checkpoint": "../x.safetensors"}}, 422, ["not found"]),
    ("txt2img", {**FAST, "restore_faces": True}, 422, ["face restoration needs CodeFormer weights", "Codeformer"]),
    ("txt2img", {**FAST, "enable_hr": True, "hr_upscaler": "4x-Nope"}, 422, ["hr_upscaler", "Lanczos"]),
    ("img2img", {**FAST, "init_images": ["bm90IGFuIGltYWdl"]}, 422, ["init_image", "not a readable image"]),
    ("img2img", {**FAST, "init_images": ["/etc/passwd"]}, 422, ["init_image"]),
    ("img2img", {**FAST, "init_images": ["A" * 100_000]}, 413, ["upload limit"]),
    ("img2img", {**FAST, "init_images": [data_url(png_bytes())], "mask": "@@@"}, 422, ["mask"]),
    ("img2img", {**FAST, "init_images": "not a list"}, 422, ["init_images"]),
    ("png-info", {"image": "%%%"}, 422, ["not valid base64"]),
    ("png-info", {"image": 5}, 422, ["image"]),
    ("extra-single-image", {"image": base64.b64encode(png_bytes()).decode(), "upscaler_1": "Bogus"}, 422, ["Bogus", "Lanczos"]),
    ("extra-single-image", {"image": base64.b64encode(png_bytes()).decode(), "upscaler_1": "Lanczos",
                            "upscaling_resize": 8}, 422, ["256x256", "limit"]),
    ("extra-single-image", {"image": base64.b64encode(png_bytes()).decode(), "upscaler_1": "Lanczos",
                            "upscaling_resize": -1}, 422, ["scale factor"]),
    ("extra-single-image", {"image": base64.b64encode(png_bytes()).decode(), "gfpgan_visibility": 1}, 422, ["face restoration"]),
    ("extra-single-image", {"image": ""}, 422, ["image"]),
])
def test_garbage_gets_a_clear_4xx(client, path, payload, status, words):
    assert_clean_error(client.post(f"/sdapi/v1/{path}", json=payload), status, *words)


def test_unparseable_bodies_are_422(client):
    for path in ("txt2img", "img2img", "png-info", "options", "extra-single-image"):
        response = client.post(f"/sdapi/v1/{path}", content=b"{broken", headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, response.text)


# -- webuiapi against a real server ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(models_dir, tmp_path_factory) -> Iterator[int]:  # noqa: F811
    """uvicorn on 127.0.0.1 in a thread, with basic auth; yields its port."""
    data = tmp_path_factory.mktemp("live") / "data"
    settings = Settings(models_dir=models_dir, data_dir=data, basic_auth={"ann": "pw"}, limits=TEST_LIMITS)
    app = create_app(settings, store=ModelStore(models_dir, hash_cache=data.parent / "hashes.json"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(30)


def test_webuiapi_round_trip(live_server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=live_server, sampler="Euler a", steps=2, username="ann", password="pw")
    result = api.txt2img(prompt="a lighthouse", seed=21, width=32, height=32, batch_size=2)
    assert [image.size for image in result.images] == [(32, 32), (32, 32)]
    assert result.info["all_seeds"] == [21, 22] and result.info["sampler_name"] == "Euler a"

    result = api.img2img(images=[result.image], prompt="a lighthouse at night", width=32, height=32,
                         denoising_strength=0.6, mask_image=Image.new("RGB", (32, 32), "white"), inpainting_fill=1)
    assert result.image.size == (32, 32) and "Denoising strength: 0.6" in result.info["infotexts"][0]

    api.util_set_model("tiny")
    assert api.util_get_current_model().startswith("tiny.safetensors [")
    assert api.txt2img(prompt="x", width=32, height=32).info["sd_model_name"] == "tiny"
    api.set_options({"sd_model_checkpoint": "more/second.safetensors"})
    assert api.util_get_current_model().startswith("more/second.safetensors [")

    info = api.png_info(result.image)
    assert info.info.startswith("a lighthouse at night\n") and info.parameters["Denoising strength"] == "0.6"
    assert [s["name"] for s in api.get_samplers()][:2] == ["Euler", "Euler a"]
    assert api.get_upscalers()[1]["name"] == "Lanczos" and api.get_loras()[0]["name"] == "ink-style"
    assert api.extra_single_image(result.image, upscaler_1="Lanczos", upscaling_resize=2).image.size == (64, 64)


def test_webuiapi_progress_while_a_job_runs_then_interrupt(live_server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=live_server, steps=60, username="ann", password="pw")
    finished: dict = {}
    worker = threading.Thread(target=lambda: finished.update(result=api.txt2img(prompt="slow", width=32, height=32)))
    worker.start()
    seen = []
    deadline = time.monotonic() + 60
    while worker.is_alive() and time.monotonic() < deadline:
        progress = api.get_progress()
        if progress["state"]["sampling_steps"]:
            seen.append(progress)
            if progress["state"]["sampling_step"] >= 5:
                break
        time.sleep(0.05)
    assert seen, "never saw the job running"
    last = seen[-1]
    assert 0 < last["progress"] < 1 and last["state"]["job_count"] == 1 and last["state"]["sampling_steps"] == 60
    assert last["current_image"] is None or Image.open(io.BytesIO(base64.b64decode(last["current_image"]))).size
    other = webuiapi.WebUIApi(host="127.0.0.1", port=live_server, username="ann", password="pw")
    other.interrupt()
    worker.join(60)
    assert not worker.is_alive()
    # Interrupted before its only picture was done: A1111 answers with what was made, here nothing.
    assert finished["result"].images == [] and finished["result"].info["infotexts"] == []
    assert api.get_progress()["state"]["job_count"] == 0
