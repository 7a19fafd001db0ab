"""The native HTTP API (`/api/v1`) on the real JobQueue and a tiny model: every route, auth, limits and garbage.

Also the shared fixtures of the server tests (`tests/test_sdapi.py` imports them): a tmp A1111-style models
folder with two tiny checkpoints, and `make_client` for an app with any settings.
"""

from __future__ import annotations

import base64
import io
import json
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from brushwork.models.store import ModelStore
from brushwork.serve.app import create_app
from brushwork.serve.settings import Limits, Settings
from tiny_models import write_tiny_checkpoint

FAST = {"steps": 2, "width": 32, "height": 32}
TEST_LIMITS = Limits(max_pixels=128 * 128, max_steps=60, max_batch=4, max_upload_bytes=64 * 1024, max_image_side=256)
TIMEOUT = 60.0  # seconds a single job may take on a busy machine before a test fails


# -- shared fixtures and helpers -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """models/Stable-diffusion/{tiny, more/second}.safetensors, a Lora file and an empty VAE folder."""
    root = tmp_path_factory.mktemp("models")
    (root / "Stable-diffusion" / "more").mkdir(parents=True)
    write_tiny_checkpoint("sd1", root / "Stable-diffusion" / "tiny.safetensors")
    write_tiny_checkpoint("sd1", root / "Stable-diffusion" / "more" / "second.safetensors", seed=1)
    (root / "Lora").mkdir()
    (root / "Lora" / "ink-style.safetensors").write_bytes(b"listed, never loaded here")
    (root / "VAE").mkdir()
    return root


@contextmanager
def make_client(models_dir: Path, data_dir: Path, **settings: Any) -> Iterator[TestClient]:
    """A TestClient (lifespan run: the queue's worker is started and stopped) over a fresh data folder."""
    settings.setdefault("limits", TEST_LIMITS)
    app = create_app(Settings(models_dir=models_dir, data_dir=data_dir, **settings),
                     store=ModelStore(models_dir, hash_cache=data_dir.parent / f"{data_dir.name}-hashes.json"))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def client(models_dir, tmp_path_factory) -> Iterator[TestClient]:
    with make_client(models_dir, tmp_path_factory.mktemp("data") / "data") as client:
        yield client


def png_bytes(size=(32, 32), color=(200, 40, 40), info: str | None = None) -> bytes:
    from PIL import PngImagePlugin

    chunks = PngImagePlugin.PngInfo()
    if info is not None:
        chunks.add_text("parameters", info)
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG", pnginfo=chunks)
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def read_events(client: TestClient, job_id: str, *, url: str | None = None, **request: Any) -> list[tuple[str, dict]]:
    """The job's Server-Sent Events (or those of `url`) as (event name, data), parsed as a browser's EventSource
    would."""
    events, name, data = [], None, []
    with client.stream("GET", url or f"/api/v1/jobs/{job_id}/events", timeout=TIMEOUT, **request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if line.startswith("event:"):
                name = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                data.append(line.partition(":")[2].strip())
            elif line == "" and data:
                events.append((name, json.loads("\n".join(data))))
                name, data = None, []
    return events


def wait_done(client: TestClient, job_id: str, **request: Any) -> dict:
    events = read_events(client, job_id, **request)
    assert events and events[-1][0] in ("done", "failed", "cancelled"), events
    return client.get(f"/api/v1/jobs/{job_id}", **request).json()


def assert_png(data: bytes, size: tuple[int, int]) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == size
    image.load()
    return image


def assert_clean_error(response, status: int, *words: str) -> None:
    """A 4xx with a JSON detail; no stack trace, never a 500."""
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    text = json.dumps(detail)
    for word in words:
        assert word in text, (word, text)
    assert "Traceback" not in text


# -- jobs ------------------------------------------------------------------------------------------------

def test_submit_follow_events_and_fetch_pictures(client):
    response = client.post("/api/v1/jobs", json={"prompt": "a red fox", "seed": 7, "batch_size": 2, **FAST})
    assert response.status_code == 202
    submitted = response.json()
    assert submitted["state"] == "queued" and isinstance(submitted["position"], int)

    events = read_events(client, submitted["id"])
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) <= {"queued", "progress"}
    progress = [data for name, data in events if name == "progress"]
    assert all(data["total"] >= data["step"] >= 0 for data in progress)
    previews = [data["preview_png_base64"] for data in progress if data["preview_png_base64"]]
    for preview in previews:
        Image.open(io.BytesIO(base64.b64decode(preview))).load()
    done = events[-1][1]
    assert [image["seed"] for image in done["images"]] == [7, 8]

    job = client.get(f"/api/v1/jobs/{submitted['id']}").json()
    assert job["state"] == "done" and job["recipe"]["seed"] == 7 and job["progress"]["step"] == job["progress"]["total"]
    images = client.get(f"/api/v1/jobs/{submitted['id']}/images").json()
    assert [image["id"] for image in images] == [image["id"] for image in job["images"]]
    picture = client.get(images[1]["url"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert_png(picture.content, (32, 32))
    assert "Seed: 8" in Image.open(io.BytesIO(picture.content)).info["parameters"]
    assert submitted["id"] in [j["id"] for j in client.get("/api/v1/jobs").json()]


def test_img2img_as_multipart_files_and_as_data_urls(client):
    recipe = {"prompt": "a blue fox", "denoising_strength": 0.5, **FAST}
    mask = png_bytes(color=(255, 255, 255))
    response = client.post("/api/v1/jobs", data={"recipe": json.dumps(recipe)},
                           files={"init_image": ("in.png", png_bytes((40, 48)), "image/png"),
                                  "mask": ("mask.png", mask, "image/png")})
    assert response.status_code == 202, response.text
    job = wait_done(client, response.json()["id"])
    assert job["state"] == "done" and job["recipe"]["init_image"].startswith("data:image/png;base64,")
    assert "Mask blur" in job["images"][0]["infotext"]

    response = client.post("/api/v1/jobs", json=recipe | {"init_image": data_url(png_bytes())})
    assert response.status_code == 202
    job = wait_done(client, response.json()["id"])
    assert job["state"] == "done" and (job["images"][0]["width"], job["images"][0]["height"]) == (32, 32)


def test_cancel_a_queued_job_and_a_finished_one(client):
    slow = client.post("/api/v1/jobs", json={"prompt": "slow", **FAST, "steps": 60}).json()
    queued = client.post("/api/v1/jobs", json={"prompt": "queued", **FAST}).json()
    answer = client.post(f"/api/v1/jobs/{queued['id']}/cancel")
    assert answer.status_code == 200 and answer.json()["cancelled"] is True
    assert client.post(f"/api/v1/jobs/{slow['id']}/cancel").json()["cancelled"] is True
    assert wait_done(client, slow["id"])["state"] == "cancelled"
    assert client.get(f"/api/v1/jobs/{queued['id']}").json()["state"] == "cancelled"
    assert_clean_error(client.post(f"/api/v1/jobs/{queued['id']}/cancel"), 409, "already cancelled")
    assert_clean_error(client.post("/api/v1/jobs/nope/cancel"), 404, "no job")


def test_gallery_is_newest_first_and_paged(client):
    job = client.post("/api/v1/jobs", json={"prompt": "gallery", "seed": 100, "batch_size": 3, **FAST}).json()
    assert wait_done(client, job["id"])["state"] == "done"
    first = client.get("/api/v1/gallery", params={"page": 0, "per_page": 2}).json()
    second = client.get("/api/v1/gallery", params={"page": 1, "per_page": 2}).json()
    assert [image["seed"] for image in first["images"]] == [102, 101]
    assert second["images"][0]["seed"] == 100 and first["per_page"] == 2
    assert client.get(first["images"][0]["url"]).status_code == 200


def test_models_samplers_upscalers_and_info(client):
    models = client.get("/api/v1/models").json()
    assert models == {"checkpoints": ["more/second.safetensors", "tiny.safetensors", "brushwork-shapes.safetensors"], "vaes": [],
                      "loras": ["ink-style.safetensors"], "default_checkpoint": "more/second.safetensors"}
    samplers = client.get("/api/v1/samplers").json()
    assert "Euler a" in samplers and "DPM++ 2M Karras" in samplers
    upscalers = client.get("/api/v1/upscalers").json()
    assert "Latent (bicubic)" in upscalers["latent"] and upscalers["image"][:2] == ["Lanczos", "Nearest"]
    info = client.get("/api/v1/info").json()
    assert info["auth"] is False and info["user"] == "anonymous" and info["limits"]["max_steps"] == 60


def test_png_info_reads_back_the_recipe(client):
    job = client.post("/api/v1/jobs", json={"prompt": "read me back", "seed": 3, **FAST}).json()
    image = wait_done(client, job["id"])["images"][0]
    picture = client.get(image["url"]).content
    info = client.post("/api/v1/png-info", files={"image": ("p.png", picture, "image/png")}).json()
    assert info["recipe"]["prompt"] == "read me back" and info["recipe"]["seed"] == 3 and info["index"] == 0
    assert info["parameters"]["Seed"] == "3"
    a1111 = "a castle\nSteps: 12, Sampler: Euler a, CFG scale: 5, Seed: 9, Size: 64x64"
    info = client.post("/api/v1/png-info", files={"image": ("a.png", png_bytes(info=a1111), "image/png")}).json()
    assert info["recipe"]["sampler"] == "Euler a" and info["index"] is None
    assert_clean_error(client.post("/api/v1/png-info", files={"image": ("x.png", png_bytes(), "image/png")}),
                       422, "no generation parameters")
    assert_clean_error(client.post("/api/v1/png-info", files={"image": ("x.png", b"GIF89a not really", "image/png")}),
                       422, "not a readable image")
    assert client.post("/api/v1/png-info").status_code == 422


def test_openapi_documents_every_native_route(client):
    spec = client.get("/openapi.json").json()
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/events", "/api/v1/jobs/{job_id}/cancel",
                 "/api/v1/jobs/{job_id}/images", "/api/v1/images/{image_id}", "/api/v1/models", "/api/v1/samplers",
                 "/api/v1/upscalers", "/api/v1/png-info", "/api/v1/gallery", "/sdapi/v1/txt2img"):
        assert path in spec["paths"], path
    body = spec["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"} and "Recipe" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


# -- auth ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secured(models_dir, tmp_path_factory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("secured") / "data"
    with make_client(models_dir, data, basic_auth={"alice": "s3cret", "bob": "hunter2"}, api_keys=("k-123",)) as client:
        yield client


ALICE = {"auth": ("alice", "s3cret")}
BOB = {"auth": ("bob", "hunter2")}


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/v1/jobs"), ("POST", "/api/v1/jobs"), ("GET", "/api/v1/images/x"), ("GET", "/api/v1/gallery"),
    ("GET", "/api/v1/jobs/x/events"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/sdapi/v1/options"),
    ("POST", "/sdapi/v1/txt2img"), ("GET", "/no/such/route"),
])
def test_every_route_needs_credentials(secured, method, path):
    response = secured.request(method, path)
    assert response.status_code == 401
    assert 'Basic realm="brushwork"' in response.headers.get_list("www-authenticate")
    assert "Bearer" in " ".join(response.headers.get_list("www-authenticate"))


@pytest.mark.parametrize("request_options", [
    {"auth": ("alice", "wrong")}, {"auth": ("mallory", "s3cret")}, {"headers": {"Authorization": "Bearer nope"}},
    {"headers": {"X-API-Key": "k-12"}}, {"headers": {"Authorization": "Basic !!notbase64"}},
    {"headers": {"Authorization": "Basic " + base64.b64encode(b"alice").decode()}},
])
def test_wrong_credentials_are_refused(secured, request_options):
    assert secured.get("/api/v1/info", **request_options).status_code == 401


def test_users_and_keys_own_their_jobs(secured):
    assert secured.get("/api/v1/info", **ALICE).json()["user"] == "alice"
    key_user = secured.get("/api/v1/info", headers={"Authorization": "Bearer k-123"}).json()["user"]
    assert key_user.startswith("key-") and "k-123" not in key_user
    assert secured.get("/api/v1/info", headers={"X-API-Key": "k-123"}).json()["user"] == key_user

    job = secured.post("/api/v1/jobs", json={"prompt": "alice's", **FAST}, **ALICE).json()
    assert wait_done(secured, job["id"], **ALICE)["owner"] == "alice"
    assert secured.get(f"/api/v1/jobs/{job['id']}", **BOB).status_code == 404
    assert secured.get(f"/api/v1/jobs/{job['id']}/events", **BOB).status_code == 404
    assert secured.post(f"/api/v1/jobs/{job['id']}/cancel", **BOB).status_code == 404
    assert secured.get("/api/v1/jobs", **BOB).json() == []
    assert [j["id"] for j in secured.get("/api/v1/jobs", **ALICE).json()] == [job["id"]]
    image = secured.get(f"/api/v1/jobs/{job['id']}/images", **ALICE).json()[0]
    assert secured.get(image["url"], **BOB).status_code == 200  # the gallery is the studio's, shared
    assert secured.get(image["url"]).status_code == 401


# -- limits and garbage ------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe, status, words", [
    ({"steps": 61}, 422, ["steps = 61", "--max-steps"]),
    ({"batch_size": 3, "batch_count": 2}, 422, ["= 6", "--max-batch"]),
    ({"width": 256, "height": 128}, 422, ["--max-pixels"]),
    ({"width": 64, "hires": {"scale": 4}}, 422, ["hires fix target is 256x128", "--max-pixels"]),
    ({"hires": {"scale": 2, "steps": 61}}, 422, ["hires.steps"]),
    ({"width": -64}, 422, ["width"]),
    ({"width": 33}, 422, ["multiple of 8"]),
    ({"steps": 10**30}, 422, ["steps"]),
    ({"seed": 2**70}, 422, ["seed"]),
    ({"cfg_scale": "NaN"}, 422, ["cfg_scale"]),
    ({"steps": "many"}, 422, ["steps"]),
    ({"prompt": ["not", "text"]}, 422, ["prompt"]),
    ({"surprise": 1}, 422, ["surprise"]),
    ({"sampler": "Euler z"}, 422, ["unknown sampler", "Euler a"]),
    ({"model": "nope.safetensors"}, 422, ["not found", "available: more/second.safetensors, tiny.safetensors"]),
    ({"model": "../../../etc/passwd"}, 422, ["not found"]),
    ({"vae": "missing.pt"}, 422, ["vae 'missing.pt' not found"]),
    ({"hires": {"upscaler": "Bogus"}}, 422, ["hires.upscaler", "Lanczos"]),
    ({"init_image": "/etc/passwd"}, 422, ["init_image", "base64"]),
    ({"init_image": base64.b64encode(b"not a picture at all").decode()}, 422, ["init_image", "not a readable image"]),
    ({"init_image": data_url(png_bytes()), "mask": "%%%"}, 422, ["mask"]),
    ({"init_image": "A" * 100_000}, 413, ["upload limit", "--max-upload-mb"]),
    ({"init_image": data_url(png_bytes((300, 20)))}, 413, ["300x20", "256 pixels on a side"]),
])
def test_bad_recipes_get_a_clear_4xx(client, recipe, status, words):
    response = client.post("/api/v1/jobs", content=json.dumps({**FAST, **recipe}), headers={"content-type": "application/json"})
    assert_clean_error(response, status, *words)


@pytest.mark.parametrize("body, content_type", [
    (b"{not json", "application/json"), (b"[1, 2]", "application/json"), (b"", "application/json"),
    (b"\xff\xfe\x00garbage", "application/json"), (b"prompt=hi", "application/x-www-form-urlencoded"),
    (b"--x\r\nbroken", "multipart/form-data; boundary=x"),
])
def test_unparseable_bodies_get_a_4xx(client, body, content_type):
    response = client.post("/api/v1/jobs", content=body, headers={"content-type": content_type})
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert "detail" in response.json()


def test_uploads_past_the_limits(client):
    big = client.post("/api/v1/jobs", content=b"x" * (TEST_LIMITS.max_body_bytes + 1), headers={"content-type": "application/json"})
    assert_clean_error(big, 413, "request body")

    def chunks():  # no Content-Length: the limit applies while the body streams in
        for _ in range(150):
            yield b"x" * 10_000

    assert_clean_error(client.post("/api/v1/jobs", content=chunks(), headers={"content-type": "application/json"}),
                       413, "request body")
    noise = Image.frombytes("RGB", (200, 200), random.Random(0).randbytes(200 * 200 * 3))  # incompressible
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    assert len(buffer.getvalue()) > TEST_LIMITS.max_upload_bytes
    response = client.post("/api/v1/jobs", data={"recipe": json.dumps(FAST)},
                           files={"init_image": ("big.png", buffer.getvalue(), "image/png")})
    assert_clean_error(response, 413, "init_image", "upload limit")
    response = client.post("/api/v1/jobs", data={"recipe": json.dumps(FAST)},
                           files={"init_image": ("x.png", b"\x89PNG\r\n\x1a\n broken", "image/png")})
    assert_clean_error(response, 422, "init_image", "not a readable image")
    response = client.post("/api/v1/jobs", data={"recipe": "{oops"})
    assert_clean_error(response, 422, "not valid JSON")
    response = client.post("/api/v1/jobs", files={"init_image": ("x.png", png_bytes(), "image/png")})
    assert_clean_error(response, 422, "recipe")
    response = client.post("/api/v1/jobs", data={"recipe": json.dumps({**FAST, "init_image": data_url(png_bytes())})},
                           files={"init_image": ("x.png", png_bytes(), "image/png")})
    assert_clean_error(response, 422, "given both")


@pytest.mark.parametrize("method, path, params", [
    ("GET", "/api/v1/jobs/nope", None), ("GET", "/api/v1/jobs/nope/images", None),
    ("GET", "/api/v1/jobs/nope/events", None), ("GET", "/api/v1/images/nope", None),
    ("GET", "/api/v1/images/..%2F..%2Fqueue.sqlite3", None),
])
def test_unknown_ids_are_404(client, method, path, params):
    assert_clean_error(client.request(method, path, params=params), 404)


@pytest.mark.parametrize("params", [{"page": -1}, {"per_page": 0}, {"per_page": 10**9}, {"page": "x"}])
def test_bad_gallery_paging_is_422(client, params):
    assert client.get("/api/v1/gallery", params=params).status_code == 422
    assert client.get("/api/v1/jobs", params={"limit": 0}).status_code == 422


# -- the serve command -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--host", "0.0.0.0"], "--insecure"), (["--host", "192.168.1.20"], "--api-auth"),
    (["--api-auth", "alice"], "user:password"), (["--max-steps", "0"], "--max-steps must be positive"),
    (["--port", "70000"], "--port"), (["--api-key", " "], "--api-key"),
])
def test_serve_refuses_unsafe_or_bad_flags(argv, words, capsys):
    from brushwork.cli import main

    assert main(["serve", *argv]) == 2
    assert words in capsys.readouterr().err


def test_serve_flags_build_settings():
    from brushwork.cli import build_parser
    from brushwork.commands.serve import settings_from_args

    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--api-auth", "a:b,c:d:e", "--api-key", "k1",
                                      "--api-key", "k2", "--max-upload-mb", "2", "--no-batching", "--max-pixels", "4096"])
    settings = settings_from_args(args)
    assert settings.basic_auth == {"a": "b", "c": "d:e"} and settings.api_keys == ("k1", "k2")
    assert settings.limits.max_upload_bytes == 2 * 1024 * 1024 and settings.limits.max_pixels == 4096
    assert settings.batching is False and settings.host == "0.0.0.0"
    public = settings_from_args(build_parser().parse_args(["serve", "--host", "0.0.0.0", "--insecure"]))
    assert public.auth_enabled is False
    for host in ("localhost", "127.0.0.1", "::1", "[::1]"):
        assert settings_from_args(build_parser().parse_args(["serve", "--host", host])).host == host


def test_control_unit_pictures_are_inline_only_and_models_confined(client, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    unit = {"model": "nothing", "image": str(secret)}
    response = client.post("/api/v1/jobs", json={**FAST, "control_units": [unit]})
    assert_clean_error(response, 422, "control_units.0.image", "not valid base64")
    inline = {**unit, "image": data_url(png_bytes())}
    assert_clean_error(client.post("/api/v1/jobs", json={**FAST, "control_units": [inline]}), 422, "controlnet 'nothing' not found")
    escaping = {**inline, "model": "../Stable-diffusion/tiny"}
    assert client.post("/api/v1/jobs", json={**FAST, "control_units": [escaping]}).status_code in (400, 404, 422)
    huge = {**inline, "processor_res": 4096}
    assert_clean_error(client.post("/api/v1/jobs", json={**FAST, "control_units": [huge]}), 422, "processor_res")
