"""No drift: through the server's queue, 100 jobs with random LoRA combinations and weights (some cancelled while
running or queued, some failing on a broken LoRA file) leave the shared model bit-identical: a picture made
before them is made again byte for byte, and every weight equals a fresh load of the checkpoint."""

from __future__ import annotations

import random
import time

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from brushwork.models.store import ModelStore
from brushwork.serve.app import create_app
from brushwork.serve.settings import Settings
from test_api import TEST_LIMITS, wait_done
from tiny_loras import kohya_file, lora_factors, weights
from tiny_models import tiny_components, write_tiny_checkpoint

GOOD = ("ink", "paper", "chalk")
JOBS = 100


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift-models")
    (root / "Stable-diffusion").mkdir()
    components = write_tiny_checkpoint("sd1", root / "Stable-diffusion" / "tiny.safetensors")
    (root / "Lora").mkdir()
    for seed, name in enumerate(GOOD):
        save_file(kohya_file(components, lora_factors(rank=2 + seed), seed=seed), root / "Lora" / f"{name}.safetensors")
    # Its layers fit another model: accepted at submission (the file exists), fails when the job loads it.
    save_file(kohya_file(tiny_components("sdxl"), lora_factors(), text_encoder=False), root / "Lora" / "broken.safetensors")
    return root


def test_a_hundred_lora_jobs_leave_the_model_bit_identical(models, tmp_path):
    store = ModelStore(models, hash_cache=tmp_path / "hashes.json")
    app = create_app(Settings(models_dir=models, data_dir=tmp_path / "data", limits=TEST_LIMITS), store=store)
    chance = random.Random(14)
    plain = {"prompt": "a red circle", "seed": 1, "steps": 3, "width": 32, "height": 32, "sampler": "Euler a"}
    with TestClient(app, raise_server_exceptions=False) as client:
        def make(recipe: dict) -> str:
            response = client.post("/api/v1/jobs", json=recipe)
            assert response.status_code == 202, response.text
            return response.json()["id"]

        def picture(job_id: str) -> bytes:
            job = wait_done(client, job_id)
            assert job["state"] == "done", job
            return client.get(job["images"][0]["url"]).content

        first = picture(make(plain))
        ids, expected = [], {}
        for number in range(JOBS):
            names = chance.sample(GOOD, chance.randint(1, 3))
            tags = " ".join(f"<lora:{name}:{chance.uniform(-1.5, 1.5):.2f}>" for name in names)
            recipe = {"prompt": f"shape {number % 7} {tags}", "seed": number, "steps": 2, "width": 32, "height": 32}
            if number % 10 == 3:
                recipe["prompt"] += " <lora:broken:1>"
                expected[number] = "failed"
            if number % 10 == 7:
                recipe["steps"], expected[number] = 40, "cancelled"
            if number % 5 == 0:  # a native `loras` list beside the tags
                recipe["loras"] = [{"name": chance.choice(GOOD), "weight": 0.5, "unet_weight": -0.5}]
            ids.append(make(recipe))
            if expected.get(number) == "cancelled" and number % 20 == 7:
                deadline = time.monotonic() + 60  # this one is cancelled while it runs
                while client.get(f"/api/v1/jobs/{ids[-1]}").json()["state"] == "queued":
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            if expected.get(number) == "cancelled":
                assert client.post(f"/api/v1/jobs/{ids[-1]}/cancel").status_code == 200
        states = [wait_done(client, job_id)["state"] for job_id in ids]
        for number, state in enumerate(states):
            assert state == expected.get(number, "done"), (number, state)
        failed = client.get(f"/api/v1/jobs/{ids[3]}").json()
        assert "broken.safetensors" in failed["error"] and "match nothing" in failed["error"]

        assert picture(make(plain)) == first
    fresh = weights(ModelStore(models).load("tiny").components)
    now = weights(store.load("tiny").components)
    assert now.keys() == fresh.keys() and all(now[key].equal(fresh[key]) for key in fresh)


def test_a_job_of_several_batches_applies_its_loras_once(models, tmp_path, monkeypatch):
    from brushwork.models.patches import patcher

    applied = []
    real = patcher.ModelPatcher.applied

    def counting(self, patches):
        applied.append(len(patches))
        return real(self, patches)

    monkeypatch.setattr(patcher.ModelPatcher, "applied", counting)
    store = ModelStore(models, hash_cache=tmp_path / "hashes.json")
    app = create_app(Settings(models_dir=models, data_dir=tmp_path / "data", limits=TEST_LIMITS), store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/api/v1/jobs", json={"prompt": "x <lora:ink:0.5>", "steps": 2, "width": 32,
                                                     "height": 32, "batch_count": 3, "seed": 4})
        job = wait_done(client, response.json()["id"])
    assert job["state"] == "done" and len(job["images"]) == 3
    assert applied == [1]  # one LoRA, applied once for the three batches
