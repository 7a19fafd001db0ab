"""LoRAs from the HTTP APIs: A1111's prompt tags on /sdapi/v1, the native `loras` list, the listing with
aliases and metadata, and clear 4xx answers for a LoRA that is not there or does not fit."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from test_api import assert_clean_error, make_client, wait_done
from tiny_loras import kohya_file, lora_factors
from tiny_models import tiny_components, write_tiny_checkpoint

FAST = {"steps": 2, "width": 32, "height": 32, "seed": 3, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-api")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    components = write_tiny_checkpoint("sd1", models / "Stable-diffusion" / "tiny.safetensors")
    (models / "Lora").mkdir()
    metadata = {"ss_output_name": "Ink Style", "ss_tag_frequency": json.dumps({"ink": {"brush": 3}})}
    save_file(kohya_file(components, lora_factors(), seed=1), models / "Lora" / "ink.safetensors", metadata=metadata)
    (models / "LyCORIS" / "more").mkdir(parents=True)
    save_file(kohya_file(tiny_components("sdxl"), lora_factors(), text_encoder=False),
              models / "LyCORIS" / "more" / "xl-only.safetensors")
    with make_client(models, root / "data") as client:
        yield client


def picture(body: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))), int)


def test_sdapi_tag_applies_the_lora_and_reports_its_hash(client):
    plain = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", **FAST}).json()
    tagged = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle <lora:ink:0.9>", **FAST}).json()
    assert np.abs(picture(plain) - picture(tagged)).max() > 10
    info = json.loads(tagged["info"])
    assert info["prompt"] == "a red circle <lora:ink:0.9>"
    assert 'Lora hashes: "ink: ' in info["infotexts"][0]
    again = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle <lora:ink:0.9>", **FAST}).json()
    assert np.array_equal(picture(again), picture(tagged))
    assert np.array_equal(picture(client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", **FAST}).json()),
                          picture(plain))  # the model is as it was


def test_native_loras_list_equals_the_tag(client):
    def made(recipe: dict) -> bytes:
        response = client.post("/api/v1/jobs", json=recipe)
        assert response.status_code == 202, response.text
        job = wait_done(client, response.json()["id"])
        assert job["state"] == "done", job
        return client.get(job["images"][0]["url"]).content

    base = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "seed": 3, "sampler": "Euler"}
    by_list = made(base | {"loras": [{"name": "ink", "weight": 0.6}]})
    by_tag = made(base | {"prompt": "a red circle <lora:ink:0.6>"})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(by_list))), np.asarray(Image.open(io.BytesIO(by_tag))))
    assert "<lora:ink:0.6>" in Image.open(io.BytesIO(by_list)).info["parameters"]


def test_listing_has_names_aliases_subfolders_and_metadata(client):
    loras = {lora["name"]: lora for lora in client.get("/sdapi/v1/loras").json()}
    assert set(loras) == {"ink", "xl-only"}
    assert loras["ink"]["alias"] == "Ink Style" and loras["xl-only"]["alias"] == "xl-only"
    assert loras["ink"]["metadata"]["ss_tag_frequency"] == {"ink": {"brush": 3}}
    assert loras["xl-only"]["path"].endswith("LyCORIS/more/xl-only.safetensors")


@pytest.mark.parametrize("route, body, status, words", [
    ("/sdapi/v1/txt2img", {"prompt": "x <lora:nothing:1>"}, 422, ("'nothing' not found", "Lora", "ink.safetensors")),
    ("/api/v1/jobs", {"prompt": "x", "loras": [{"name": "nothing"}]}, 422, ("'nothing' not found",)),
    ("/api/v1/jobs", {"prompt": "x", "loras": [{"name": "../Stable-diffusion/tiny"}]}, 422, ("not found",)),
    ("/api/v1/jobs", {"prompt": "x", "loras": [{"name": "ink", "weight": 99}]}, 422, ("weight", "less than or equal to 10")),
    ("/sdapi/v1/txt2img", {"prompt": "x <lora:ink:much>"}, 422, ("malformed weight 'much'",)),
    ("/sdapi/v1/txt2img", {"prompt": "x <lora:xl-only:1>"}, 422, ("xl-only.safetensors", "match nothing")),
])
def test_a_lora_that_is_not_there_or_does_not_fit_is_a_clear_4xx(client, route, body, status, words):
    request = body | ({k: v for k, v in FAST.items() if k != "sampler_name"} if route == "/api/v1/jobs" else FAST)
    response = client.post(route, json=request)
    if route == "/api/v1/jobs" and response.status_code == 202:  # found only when the job runs
        job = wait_done(client, response.json()["id"])
        assert job["state"] == "failed" and all(word in job["error"] for word in words), job
        return
    assert_clean_error(response, status, *words)
