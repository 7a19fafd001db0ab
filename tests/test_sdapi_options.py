"""The A1111 options that take effect: samples_format and jpeg_quality (how pictures are answered),
save_images to the outdir_* folders, and eta_noise_seed_delta (ENSD). Each test gets its own server,
since options are server-wide."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from brushwork.infotext import parse_infotext
from brushwork.serve.api.info import read_info_from_bytes
from test_api import assert_clean_error, data_url, make_client, models_dir, png_bytes  # noqa: F401 (fixtures)

FAST = {"steps": 2, "width": 32, "height": 32, "seed": 5, "sampler_name": "Euler a"}


@pytest.fixture
def client(models_dir, tmp_path):
    with make_client(models_dir, tmp_path / "data") as client:
        yield client


def picture(client, route: str = "txt2img", **fields) -> tuple[bytes, dict]:
    response = client.post(f"/sdapi/v1/{route}", json={"prompt": "a red circle", **FAST, **fields})
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["images"][0]), json.loads(response.json()["info"])


@pytest.mark.parametrize("samples_format, kind", [("jpg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_pictures_are_answered_in_the_samples_format_with_their_infotext(client, samples_format, kind):
    assert client.post("/sdapi/v1/options", json={"samples_format": samples_format, "jpeg_quality": 90}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["samples_format"] == samples_format
    data, info = picture(client)
    assert Image.open(io.BytesIO(data)).format == kind
    infotext, _ = read_info_from_bytes(data)
    assert infotext == info["infotexts"][0] and "Seed: 5" in infotext
    extras = client.post("/sdapi/v1/extra-single-image",
                         json={"image": data_url(png_bytes()), "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert Image.open(io.BytesIO(base64.b64decode(extras.json()["image"]))).format == kind


def test_jpeg_quality_changes_the_answer(client):
    client.post("/sdapi/v1/options", json={"samples_format": "jpg", "jpeg_quality": 10})
    low, _ = picture(client, width=64, height=64)
    client.post("/sdapi/v1/options", json={"jpeg_quality": 100})
    high, _ = picture(client, width=64, height=64)
    assert len(low) < len(high)


def test_save_images_writes_to_the_outdir_folders(client, tmp_path):
    data_dir = tmp_path / "data"
    picture(client)  # save_images is off by default, as in A1111's API
    assert not (data_dir / "outputs" / "txt2img-images").exists()
    data, _ = picture(client, save_images=True)
    (saved,) = (data_dir / "outputs" / "txt2img-images").iterdir()
    assert saved.name == "00000-5-a-red-circle.png" and saved.read_bytes() == data

    client.post("/sdapi/v1/options", json={"samples_format": "jpg", "outdir_img2img_samples": "mine/i2i"})
    data, _ = picture(client, "img2img", init_images=[data_url(png_bytes())], save_images=True)
    (saved,) = (data_dir / "mine" / "i2i").iterdir()
    assert saved.suffix == ".jpg" and saved.read_bytes() == data
    client.post("/sdapi/v1/options", json={"outdir_samples": "all"})  # one folder for every mode wins
    picture(client, save_images=True)
    assert len(list((data_dir / "all").iterdir())) == 1


@pytest.mark.parametrize("options, words", [
    ({"samples_format": "gif"}, ["samples_format", "png, jpg"]),
    ({"jpeg_quality": 101}, ["jpeg_quality", "0 to 100"]),
    ({"jpeg_quality": "high"}, ["jpeg_quality"]),
    ({"eta_noise_seed_delta": -1}, ["eta_noise_seed_delta"]),
    ({"outdir_samples": "../elsewhere"}, ["outdir_samples", "inside the server's data folder"]),
    ({"outdir_txt2img_samples": "/etc"}, ["outdir_txt2img_samples", "relative path"]),
])
def test_bad_option_values_are_refused_and_change_nothing(client, options, words):
    before = client.get("/sdapi/v1/options").json()
    assert_clean_error(client.post("/sdapi/v1/options", json=options), 422, *words)
    assert client.get("/sdapi/v1/options").json() == before


def test_eta_noise_seed_delta_reseeds_the_samplers_noise_and_is_written_down(client):
    plain, plain_info = picture(client)
    client.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 31337})
    assert client.get("/sdapi/v1/options").json()["eta_noise_seed_delta"] == 31337
    delta, info = picture(client)
    again, _ = picture(client)
    assert delta == again != plain  # Euler a's per-step noise now comes from seed + 31337
    infotext = info["infotexts"][0]
    assert "ENSD: 31337" in infotext and "ENSD" not in plain_info["infotexts"][0]
    assert parse_infotext(infotext)[0].eta_noise_seed_delta == 31337
    # A deterministic sampler draws no per-step noise: ENSD changes nothing but the infotext.
    euler, _ = picture(client, sampler_name="Euler")
    client.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 0})
    euler_plain, _ = picture(client, sampler_name="Euler")
    assert Image.open(io.BytesIO(euler)).tobytes() == Image.open(io.BytesIO(euler_plain)).tobytes()
    overridden, _ = picture(client, override_settings={"eta_noise_seed_delta": 31337})
    assert overridden == delta
