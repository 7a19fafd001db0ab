"""`brushwork serve` as a real process: killed with SIGKILL mid-run and restarted, nothing accepted is lost or made
twice; and 50 concurrent clients get every one of their pictures."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from PIL import Image

from tiny_models import write_tiny_checkpoint

STARTUP_TIMEOUT = 90.0  # importing torch and diffusers on a busy machine


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "Stable-diffusion").mkdir()
    write_tiny_checkpoint("sd1", root / "Stable-diffusion" / "tiny.safetensors")
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve(models_dir: Path | None, data_dir: Path, port: int, log: Path, *options: str) -> Iterator[subprocess.Popen]:
    """`brushwork serve` on 127.0.0.1:port with `options`, ready to answer; stopped (if still alive) on exit.
    Without a models folder the server paints with the embedded model."""
    # One thread per process: tiny models gain nothing from more, and oversubscribed OpenMP threads on a
    # busy machine slow every step down by orders of magnitude.
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                        "XDG_CACHE_HOME": str(data_dir.parent / "cache")}
    command = [sys.executable, "-m", "brushwork.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir), *options] + (["--models-dir", str(models_dir)] if models_dir else [])
    with open(log, "ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert process.poll() is None, f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server did not start:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def check_png(data: bytes, size: tuple[int, int], seed: int) -> None:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and image.size == size and f"Seed: {seed}," in image.info["parameters"]


def test_sigkill_mid_run_then_restart_finishes_every_job_once(models_dir, tmp_path):
    data, port, log = tmp_path / "data", free_port(), tmp_path / "server.log"
    recipes = [
        {"prompt": "two batches", "seed": 10, "steps": 100, "batch_count": 2, "width": 32, "height": 32},
        {"prompt": "second", "seed": 20, "steps": 60, "width": 32, "height": 32},
        {"prompt": "third", "seed": 30, "steps": 60, "batch_size": 2, "width": 32, "height": 32},
    ]
    with serve(models_dir, data, port, log) as first:
        base = f"http://127.0.0.1:{port}/api/v1"
        ids = []
        for recipe in recipes:
            response = httpx.post(f"{base}/jobs", json=recipe, timeout=10)
            assert response.status_code == 202
            ids.append(response.json()["id"])
        # Kill once the first job has saved its first picture and is denoising its second batch.
        deadline = time.monotonic() + 120
        while True:
            job = httpx.get(f"{base}/jobs/{ids[0]}", timeout=10).json()
            if job["images"] and job["state"] == "running":
                break
            assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.05)
        kept = job["images"][0]
        first.send_signal(signal.SIGKILL)
        first.wait(10)

    with serve(models_dir, data, port, log):
        deadline = time.monotonic() + 180
        while True:
            jobs = [httpx.get(f"{base}/jobs/{job_id}", timeout=10).json() for job_id in ids]
            if all(job["state"] not in ("queued", "running") for job in jobs):
                break
            assert time.monotonic() < deadline, [job["state"] for job in jobs]
            time.sleep(0.2)

        assert [job["state"] for job in jobs] == ["done", "done", "done"], [job["error"] for job in jobs]
        assert jobs[0]["images"][0]["id"] == kept["id"]  # made before the kill, kept, not made again
        total = 0
        for job, recipe in zip(jobs, recipes):
            count = recipe.get("batch_size", 1) * recipe.get("batch_count", 1)
            assert [image["seed"] for image in job["images"]] == [recipe["seed"] + i for i in range(count)]
            for image in job["images"]:
                picture = httpx.get(f"http://127.0.0.1:{port}{image['url']}", timeout=10)
                assert picture.status_code == 200
                check_png(picture.content, (32, 32), image["seed"])
            total += count
        gallery = httpx.get(f"{base}/gallery", params={"per_page": 100}, timeout=10).json()["images"]
        assert len(gallery) == total == len({image["id"] for image in gallery})
        files = sorted(p.name for p in (data / "outputs").iterdir())
        assert len(files) == total and all(name.endswith(".png") for name in files), files


CLIENTS, JOBS_EACH = 50, 4


def test_fifty_concurrent_clients_get_every_picture(tmp_path):
    """On the embedded model (no models folder), at its native 64x64."""
    port, errors, finished = free_port(), [], []
    lock = threading.Lock()

    def client(number: int) -> None:
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
                ids = []
                for index in range(JOBS_EACH):
                    recipe = {"prompt": f"a red circle, client {number} job {index}", "seed": number * 100 + index,
                              "steps": 2}
                    response = http.post("/api/v1/jobs", json=recipe)
                    assert response.status_code == 202, response.text
                    ids.append((response.json()["id"], recipe["seed"]))
                for job_id, seed in ids:
                    last = None
                    with http.stream("GET", f"/api/v1/jobs/{job_id}/events") as stream:
                        assert stream.status_code == 200
                        for line in stream.iter_lines():
                            if line.startswith("data:"):
                                last = json.loads(line[5:])
                    assert last is not None and last["state"] == "done", last
                    assert [image["seed"] for image in last["images"]] == [seed]
                    picture = http.get(last["images"][0]["url"])
                    assert picture.status_code == 200
                    check_png(picture.content, (64, 64), seed)
                    with lock:
                        finished.append(job_id)
        except Exception as error:  # collected, so one failure does not hide the others
            with lock:
                errors.append(f"client {number}: {type(error).__name__}: {error}")

    with serve(None, tmp_path / "data", port, tmp_path / "server.log"):
        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(number,)) for number in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(240)
        elapsed = time.monotonic() - started
        gallery = httpx.get(f"http://127.0.0.1:{port}/api/v1/gallery", params={"per_page": 500}, timeout=10).json()
    assert errors == []
    assert len(finished) == len(set(finished)) == CLIENTS * JOBS_EACH
    assert len(gallery["images"]) == CLIENTS * JOBS_EACH
    print(f"{CLIENTS * JOBS_EACH} jobs from {CLIENTS} clients in {elapsed:.1f} s")
    assert elapsed < 180, f"took {elapsed:.0f} s"
