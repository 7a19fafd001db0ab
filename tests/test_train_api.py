"""Training as jobs of the native API (`/api/v1/train`): queued, streamed (loss curve and samples), cancelled,
resumed after the server stops, its file in the models folder for the next picture; bad requests are 4xx."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from contextlib import closing

import pytest
import torch
from safetensors.torch import load_file

from brushwork.models.store import ModelStore
from brushwork.serve.settings import Limits
from brushwork.serve.gallery import now
from brushwork.serve.training import TrainingJob, TrainingQueue, _Live
from brushwork.train.jobs import TrainRequest
from brushwork.train.state import TrainingState
from brushwork.shapes import make_dataset
from test_api import TEST_LIMITS, assert_clean_error, data_url, make_client, png_bytes, read_events, wait_done
from tiny_models import write_tiny_checkpoint

LORA = {"kind": "lora", "dataset": "shapes", "base": "tiny", "steps": 4, "resolution": 64, "rank": 4, "alpha": 4,
        "lr": 1e-3}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    models = tmp_path_factory.mktemp("train-api") / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint("sd1", models / "Stable-diffusion" / "tiny.safetensors")
    return models


def with_dataset(data_dir):
    make_dataset(data_dir / "datasets" / "shapes", 4, seed=5, size=64, split="all")
    return data_dir


def follow(client, job_id: str) -> list[tuple[str, dict]]:
    return read_events(client, job_id, url=f"/api/v1/train/{job_id}/events")


def test_a_lora_job_streams_its_curve_and_samples_and_paints_at_once(models_dir, tmp_path):
    with make_client(models_dir, with_dataset(tmp_path / "data")) as client:
        assert client.get("/api/v1/datasets").json() == [{"name": "shapes", "pictures": 4}]
        response = client.post("/api/v1/train", json=LORA | {"output": "shapes-style", "sample_every": 2,
                                                                "sample_prompt": "a red circle"})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        events = follow(client, job_id)
        assert events[-1][0] == "done", events[-1]
        progress = [data for name, data in events if name == "progress"]
        assert progress and all(0 < data["step"] <= 4 and data["total"] == 4 for data in progress)
        streamed = [loss for data in progress for loss in data["losses"]]  # each event adds the new points
        job = client.get(f"/api/v1/train/{job_id}").json()
        assert job["state"] == "done" and job["step"] == 4 and len(job["losses"]) == 4
        assert streamed == job["losses"][: len(streamed)]
        assert job["samples"] == ["step-000002.png", "step-000004.png"]
        assert job["output"] == "Lora/shapes-style.safetensors"
        sample = client.get(f"/api/v1/train/{job_id}/samples/step-000004.png")
        assert sample.status_code == 200 and sample.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.get(f"/api/v1/train/{job_id}/samples/..%2Frun.json").status_code == 404
        assert any(key.startswith("lora_unet_") for key in load_file(models_dir / "Lora" / "shapes-style.safetensors"))
        assert [j["id"] for j in client.get("/api/v1/train").json()] == [job_id]

        recipe = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "model": "tiny",
                  "loras": [{"name": "shapes-style", "weight": 1.0}]}
        painted = client.post("/api/v1/jobs", json=recipe)
        assert painted.status_code == 202, painted.text
        assert wait_done(client, painted.json()["id"])["state"] == "done"  # the new LoRA is usable at once
        again = client.post("/api/v1/train", json=LORA | {"output": "shapes-style"})
        assert_clean_error(again, 422, "Lora/shapes-style.safetensors already exists")
    (models_dir / "Lora" / "shapes-style.safetensors").unlink()


def test_a_running_job_is_cancelled_after_its_step(models_dir, tmp_path):
    with make_client(models_dir, with_dataset(tmp_path / "data")) as client:
        job_id = client.post("/api/v1/train", json=LORA | {"output": "long", "steps": 5000}).json()["id"]
        deadline = time.monotonic() + 120
        while client.get(f"/api/v1/train/{job_id}").json()["step"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cancelled = client.post(f"/api/v1/train/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True
        assert follow(client, job_id)[-1][0] == "cancelled"
        job = client.get(f"/api/v1/train/{job_id}").json()
        assert job["state"] == "cancelled" and 1 <= job["step"] < 5000 and job["output"] is None
        assert not (models_dir / "Lora" / "long.safetensors").exists()
        assert not list((tmp_path / "data" / "training" / job_id).rglob("*.pt"))  # optimizer state dropped
        assert_clean_error(client.post(f"/api/v1/train/{job_id}/cancel"), 409, "already cancelled")


def test_a_job_the_server_stopped_resumes_to_the_same_file(models_dir, tmp_path):
    data = with_dataset(tmp_path / "data")
    store = ModelStore(models_dir)
    first = TrainingQueue(data, store, Limits())
    first.start()
    stopped = first.submit(LORA | {"output": "resumed", "steps": 6, "checkpoint_every": 2}, "me")
    deadline = time.monotonic() + 120
    while (first.get(stopped.id).step or 0) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.close()  # as a server stopping mid-run: the state is saved, the job goes back to the queue
    assert first_state(data, stopped.id) == "queued"
    set_state(data, stopped.id, "running")  # and as a killed one: the row still says running
    second = TrainingQueue(data, store, Limits())
    second.start()
    whole = second.submit(LORA | {"output": "whole", "steps": 6, "checkpoint_every": 2}, "me")
    while second.get(whole.id).state.value not in ("done", "failed"):
        assert time.monotonic() < deadline + 120
        time.sleep(0.1)
    second.stop()
    assert second.get(stopped.id).state.value == "done", second.get(stopped.id).error
    assert second.get(stopped.id).losses == second.get(whole.id).losses  # one curve, as if never stopped
    second.close()
    resumed, uninterrupted = (load_file(models_dir / "Lora" / f"{name}.safetensors") for name in ("resumed", "whole"))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    for name in ("resumed", "whole"):
        (models_dir / "Lora" / f"{name}.safetensors").unlink()


def train_until_killed(data_dir: str, models_dir: str, step: int) -> None:
    """A server process killed (SIGKILL) while its training writes the checkpoint after `step`: the curve up to
    `step` is saved, the state folder still holds the checkpoint before it."""
    save = TrainingState.save

    def save_or_die(state, name, payload):
        if payload.get("step") == step:
            os.kill(os.getpid(), signal.SIGKILL)
        save(state, name, payload)

    TrainingState.save = save_or_die
    queue = TrainingQueue(data_dir, ModelStore(models_dir), Limits())
    queue.start()
    deadline = time.monotonic() + 120
    while any(not job.state.finished for job in queue.list_jobs("me")) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_killed_jobs_curve_goes_on_from_its_checkpoint(models_dir, tmp_path):
    data = with_dataset(tmp_path / "data")
    store = ModelStore(models_dir)
    settings = LORA | {"steps": 6, "checkpoint_every": 2}
    submitter = TrainingQueue(data, store, Limits())  # never started: submits, then reads
    killed = submitter.submit(settings | {"output": "killed"}, "me")
    # Forked, as test_queue's SIGKILL test: a fresh interpreter would spend most of the test importing torch.
    child = multiprocessing.get_context("fork").Process(target=train_until_killed, args=(str(data), str(models_dir), 4))
    child.start()
    child.join(180)
    if child.is_alive():
        child.kill()
    assert child.exitcode == -signal.SIGKILL
    cut = submitter.get(killed.id)
    assert cut.state.value == "running" and cut.step == 4 and len(cut.losses) == 4  # checkpoint 4 never landed
    submitter.close()

    second = TrainingQueue(data, store, Limits())
    second.start()
    whole = second.submit(settings | {"output": "whole-curve"}, "me")
    deadline = time.monotonic() + 180
    while not all(second.get(job.id).state.finished for job in (killed, whole)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    resumed, uninterrupted = ended = [second.get(job.id) for job in (killed, whole)]
    second.close()
    assert [job.state.value for job in ended] == ["done", "done"], [job.error for job in ended]
    # Steps 3 and 4 ran twice (the resumed run went on from checkpoint 2) but are on the curve once.
    assert resumed.step == 6 and resumed.loss_every == 1 and len(resumed.losses) == len(uninterrupted.losses) == 6
    assert resumed.losses[:2] == cut.losses[:2] and resumed.losses == uninterrupted.losses
    for name in ("killed", "whole-curve"):
        (models_dir / "Lora" / f"{name}.safetensors").unlink()


def test_a_thinned_curve_resumes_at_its_checkpoint():
    # A run long enough to keep every 2nd, then every 4th point: cut at step 3003 (a checkpoint; steps up to 3010
    # ran before the kill and are run again), it is the curve of the same run uninterrupted.
    job = TrainingJob(id="j", owner="me", dataset="shapes", request=TrainRequest(kind="lora", output="x", steps=4100),
                      state="running", created=now(), total=4100)
    whole, first = _Live(job), _Live(job)
    for step in range(1, 4101):
        whole.add(step, float(step))
    for step in range(1, 3011):
        first.add(step, float(step))
    resumed = _Live(job.model_copy(update={"losses": first.losses, "loss_every": first.every, "step": first.step}))
    for step in range(3004, 4101):
        resumed.add(step, float(step))
    assert whole.every == resumed.every == 4 and resumed.losses == whole.losses
    assert resumed.losses == [float(4 * (i + 1)) for i in range(len(whole.losses))]


def first_state(data_dir, job_id: str) -> str:
    with closing(sqlite3.connect(data_dir / "training.sqlite3")) as db:
        return db.execute("SELECT state FROM training_jobs WHERE id = ?", (job_id,)).fetchone()[0]


def set_state(data_dir, job_id: str, state: str) -> None:
    with closing(sqlite3.connect(data_dir / "training.sqlite3", isolation_level=None)) as db:
        db.execute("UPDATE training_jobs SET state = ? WHERE id = ?", (state, job_id))


@pytest.mark.parametrize(("change", "words"), [
    ({"dataset": "missing"}, ["dataset 'missing' not found", "available: shapes"]),
    ({"dataset": "../data"}, ["not found"]),
    ({"output": "sub/name"}, ["no folders"]),
    ({"output": ".."}, ["no folders"]),
    ({"kind": "embedding"}, ["needs a token"]),
    ({"kind": "dreambooth"}, ["instance prompt"]),
    ({"kind": "hypernetwork"}, ["kind"]),
    ({"steps": 11}, ["over this server's limit of 10"]),
    ({"base": "nope"}, ["checkpoint 'nope' not found"]),
    ({"mixed_precision": "fp8"}, ["mixed_precision"]),
    ({"rank": 0}, ["rank"]),
    ({"surprise": 1}, ["surprise"]),
])
def test_bad_training_requests_are_clear(models_dir, tmp_path, change, words):
    limits = Limits(**{**TEST_LIMITS.__dict__, "max_train_steps": 10})
    with make_client(models_dir, with_dataset(tmp_path / "data"), limits=limits) as client:
        assert_clean_error(client.post("/api/v1/train", json=LORA | {"output": "x"} | change), 422, *words)
        assert client.get("/api/v1/train").json() == []


def test_other_owners_jobs_do_not_exist(models_dir, tmp_path):
    with make_client(models_dir, with_dataset(tmp_path / "data"), api_keys=("alice-key", "bob-key")) as client:
        alice, bob = ({"headers": {"X-API-Key": key}} for key in ("alice-key", "bob-key"))
        job_id = client.post("/api/v1/train", json=LORA | {"output": "mine", "steps": 1}, **alice).json()["id"]
        assert client.get(f"/api/v1/train/{job_id}", **bob).status_code == 404
        assert client.post(f"/api/v1/train/{job_id}/cancel", **bob).status_code == 404
        assert client.get("/api/v1/train", **bob).json() == []
        assert follow_as(client, job_id, alice)[-1][0] in ("done", "cancelled", "failed")
    (models_dir / "Lora" / "mine.safetensors").unlink(missing_ok=True)


def follow_as(client, job_id, request):
    return read_events(client, job_id, url=f"/api/v1/train/{job_id}/events", **request)


def test_training_needs_a_models_folder(tmp_path):
    data = with_dataset(tmp_path / "data")
    queue = TrainingQueue(data, ModelStore(None), Limits())
    with pytest.raises(Exception, match="--models-dir"):
        queue.submit(LORA | {"output": "x", "base": None}, "me")


def test_an_embedding_token_cannot_name_a_path(models_dir, tmp_path):
    with make_client(models_dir, with_dataset(tmp_path / "data")) as client:
        response = client.post("/api/v1/train", json=LORA | {"kind": "embedding", "output": "x", "init_word": "star",
                                                             "token": "../../../models/Lora/victim", "sample_every": 1})
        assert_clean_error(response, 422, "token")
        assert_clean_error(client.post("/api/v1/train", json=LORA | {"output": "x", "dataset": "a\x00b"}), 422,
                           "not found")


def test_a_dreambooth_checkpoint_arrives_with_its_bases_scaling_and_schedule(models_dir, tmp_path):
    write_tiny_checkpoint("sd1", models_dir / "Stable-diffusion" / "own.safetensors", yaml_config={
        "model": {"params": {"scale_factor": 0.7, "linear_end": 0.03, "parameterization": "v"}}})
    request = {"kind": "dreambooth", "dataset": "shapes", "base": "own", "steps": 1, "resolution": 64,
               "instance_prompt": "a sks shape", "output": "own-subject"}
    with make_client(models_dir, with_dataset(tmp_path / "data")) as client:
        response = client.post("/api/v1/train", json=request)
        assert response.status_code == 202, response.text
        assert follow(client, response.json()["id"])[-1][0] == "done"
    final = models_dir / "Stable-diffusion" / "own-subject.safetensors"
    tuned = ModelStore(models_dir).load("own-subject").components
    assert final.with_suffix(".yaml").is_file() and tuned.vae.config.scaling_factor == 0.7
    assert tuned.scheduler_config["beta_end"] == 0.03


def test_a_controlnet_job_trains_on_a_datasets_pairs_with_samples_and_controls_at_once(models_dir, tmp_path):
    data = tmp_path / "data"
    make_dataset(data / "datasets" / "pairs", 4, seed=5, size=64, split="all", condition="canny")
    request = {"kind": "controlnet", "dataset": "pairs", "base": "tiny", "steps": 2, "resolution": 64, "lr": 1e-3,
               "sample_every": 2, "output": "edges"}
    with make_client(models_dir, data) as client:
        assert client.get("/api/v1/datasets").json() == [{"name": "pairs", "pictures": 4}]  # not the control pictures
        response = client.post("/api/v1/train", json=request)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert follow(client, job_id)[-1][0] == "done"
        job = client.get(f"/api/v1/train/{job_id}").json()
        assert job["output"] == "ControlNet/edges.safetensors" and job["samples"] == ["step-000002.png"]
        unit = {"model": "edges", "image": data_url(png_bytes((64, 64)))}
        painted = client.post("/api/v1/jobs", json={"prompt": "a red circle", "steps": 2, "width": 64, "height": 64,
                                                    "model": "tiny", "control_units": [unit]})
        assert painted.status_code == 202, painted.text
        assert wait_done(client, painted.json()["id"])["state"] == "done"  # the new ControlNet is usable at once
        bad = client.post("/api/v1/train", json=request | {"output": "other", "conditioning": "../datasets"})
        assert_clean_error(bad, 422, "conditioning")
    (models_dir / "ControlNet" / "edges.safetensors").unlink()
