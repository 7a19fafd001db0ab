"""The rest of A1111's /sdapi/v1: the listings and controls its clients and its own API tests call."""

from __future__ import annotations

import pytest

from test_api import assert_clean_error, make_client, models_dir, png_bytes, data_url  # noqa: F401


@pytest.fixture(scope="module")
def client(models_dir, tmp_path_factory):  # noqa: F811
    (models_dir / "embeddings").mkdir(exist_ok=True)
    from safetensors.torch import save_file
    import torch

    save_file({"emb_params": torch.zeros(2, 768)}, str(models_dir / "embeddings" / "my-style.safetensors"))
    with make_client(models_dir, tmp_path_factory.mktemp("system") / "data") as client:
        yield client


@pytest.mark.parametrize("url", [
    "cmd-flags", "samplers", "upscalers", "sd-models", "hypernetworks", "face-restorers", "realesrgan-models",
    "prompt-styles", "embeddings", "memory", "script-info", "scripts", "sd-modules", "latent-upscale-modes", "options",
])
def test_a1111_get_routes_answer(client, url):  # A1111's test_utils.py, plus the rest its OpenAPI lists
    assert client.get(f"/sdapi/v1/{url}").status_code == 200


def test_shapes(client, models_dir):  # noqa: F811
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["api"] is True and flags["api_server_stop"] is False and flags["port"] == 7860
    assert flags["ckpt_dir"] == str(models_dir / "Stable-diffusion")
    memory = client.get("/sdapi/v1/memory").json()
    assert memory["ram"]["total"] > memory["ram"]["free"] > 0 and "error" in memory["cuda"]
    embeddings = client.get("/sdapi/v1/embeddings").json()  # loaded or skipped: tests/test_embeddings.py
    assert (embeddings["loaded"] | embeddings["skipped"]) == {"my-style": {
        "step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 768, "vectors": 2}}
    assert client.get("/sdapi/v1/hypernetworks").json() == [] and client.get("/sdapi/v1/sd-modules").json() == []
    scripts = client.get("/sdapi/v1/script-info").json()
    assert [(s["name"], s["is_img2img"], len(s["args"])) for s in scripts] == [("sd upscale", True, 4)]


def test_interrogate_is_a_clear_4xx(client):
    response = client.post("/sdapi/v1/interrogate", json={"image": data_url(png_bytes()), "model": "clip"})
    assert_clean_error(response, 422, "captioning model")


def test_checkpoint_unload_and_reload(client, models_dir):  # noqa: F811
    store = client.app.state.store
    assert client.post("/sdapi/v1/reload-checkpoint").status_code == 200
    assert len(store._loaded) == 1
    assert client.post("/sdapi/v1/unload-checkpoint").status_code == 200
    assert len(store._loaded) == 0


def test_server_controls_are_off_unless_enabled(client, models_dir, tmp_path):  # noqa: F811
    for action in ("stop", "restart", "kill"):
        assert_clean_error(client.post(f"/sdapi/v1/server-{action}"), 403, "--api-server-stop")
    asked = []
    with make_client(models_dir, tmp_path / "data", allow_server_stop=True) as enabled:
        enabled.app.state.server_control = asked.append
        for action in ("stop", "restart", "kill"):
            assert enabled.post(f"/sdapi/v1/server-{action}").status_code == 200
    assert asked == ["stop", "restart", "kill"]


def test_styles_apply_and_list(models_dir, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    (data / "styles.csv").write_text('name,prompt,negative_prompt\nink,"{prompt}, ink drawing",blurry\n')
    with make_client(models_dir, data) as client:
        assert client.get("/sdapi/v1/prompt-styles").json() == [
            {"name": "ink", "prompt": "{prompt}, ink drawing", "negative_prompt": "blurry"}]
        body = {"prompt": "a cat", "styles": ["ink"], "steps": 2, "width": 32, "height": 32}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        info = response.json()["info"]
        assert '"prompt": "a cat, ink drawing"' in info and '"negative_prompt": "blurry"' in info
        assert_clean_error(client.post("/sdapi/v1/txt2img", json=body | {"styles": ["oil"]}), 422, "oil", "ink")


def test_sizes_round_down_to_multiples_of_8_and_unknown_scripts_are_named(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 39, "height": 45})
    assert response.status_code == 200, response.text
    assert '"width": 32, "height": 40' in response.json()["info"]
    assert_clean_error(client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "script_name": "x/y/z plot"}),
                       422, "script_name", "x/y/z plot")


def test_extra_batch_images(client):
    body = {"upscaler_1": "Lanczos", "upscaling_resize": 2,
            "imageList": [{"data": data_url(png_bytes()), "name": "a.png"}, {"data": data_url(png_bytes((16, 16))), "name": "b"}]}
    response = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 2 and "Lanczos" in response.json()["html_info"]
    assert_clean_error(client.post("/sdapi/v1/extra-batch-images", json={"imageList": []}), 422, "imageList")


def test_tiling_is_honoured(client):  # A1111's test_txt2img_with_tiling_performed
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 32, "height": 32, "tiling": True})
    assert response.status_code == 200, response.text
    assert "Tiling: True" in response.json()["info"]


def test_a_damaged_lora_file_is_a_clear_422(client):  # models_dir's ink-style.safetensors holds no tensors
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x <lora:ink-style:0.5>", "steps": 2, "width": 32, "height": 32})
    assert_clean_error(response, 422, "ink-style.safetensors", "not a readable .safetensors file")


def test_options_have_every_a1111_key_and_keep_what_is_set(client):  # A1111's test_options_write
    options = client.get("/sdapi/v1/options").json()
    assert len(options) > 300
    for key, default in (("send_seed", True), ("samples_format", "png"), ("outdir_txt2img_samples", "outputs/txt2img-images"),
                         ("CLIP_stop_at_last_layers", 1), ("eta_noise_seed_delta", 0), ("jpeg_quality", 80)):
        assert options[key] == default, key
    assert client.post("/sdapi/v1/options", json={"send_seed": False}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["send_seed"] is False
    client.post("/sdapi/v1/options", json={"send_seed": True})
