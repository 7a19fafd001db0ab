"""Server batching benchmark: 8 concurrent clients on the embedded model, grouped vs one job at a time.

    python bench/batching.py                      # 8 clients x 6 requests, 64x64, 20 steps, CPU
    python bench/batching.py --clients 8 --requests 10 --device cuda

Starts `brushwork serve` twice on 127.0.0.1 (grouping on, then `--no-batching`), each client with its own
API key (so the queue sees 8 users), and has every client post A1111 `/sdapi/v1/txt2img` requests one after
another (different prompts and seeds, same size/steps/sampler/CFG, so the queue may denoise them together).
The peer is diffusers' own StableDiffusionPipeline on the same file, serving the same requests one by one
as a plain server would. Printed: images per second of each and the ratios.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PROMPTS = [
    "a red circle on a blue background", "two green squares", "a small yellow star in the top left corner",
    "a white cross on a black background", "three blue triangles", "a large orange square at the bottom",
    "a pink circle on the right", "a cyan star",
]
SETTINGS = {"steps": 20, "cfg_scale": 7, "sampler_name": "Euler a", "width": 64, "height": 64}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, key: str, process: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/api/v1/info", headers={"X-API-Key": key}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit("the server did not start")


def requests_of(client: int, count: int) -> list[dict]:
    return [{"prompt": PROMPTS[(client + i) % len(PROMPTS)], "seed": 1000 * client + i, **SETTINGS} for i in range(count)]


def serve_and_measure(batching: bool, clients: int, requests: int, device: str | None) -> float:
    """Images per second of `clients` threads, each posting `requests` txt2img requests to a fresh server."""
    import httpx

    port, keys = free_port(), [f"bench-key-{i}" for i in range(clients)]
    with tempfile.TemporaryDirectory() as data_dir:
        command = ["brushwork", "serve", "--port", str(port), "--data-dir", data_dir]
        command += [arg for key in keys for arg in ("--api-key", key)]
        command += [] if batching else ["--no-batching"]
        command += ["--device", device] if device else []
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(url, keys[0], process)
            warm = httpx.post(f"{url}/sdapi/v1/txt2img", json=requests_of(0, 1)[0], headers={"X-API-Key": keys[0]}, timeout=600)
            warm.raise_for_status()  # loads the model: not timed
            failures: list[str] = []

            def client(index: int) -> None:
                with httpx.Client(base_url=url, headers={"X-API-Key": keys[index]}, timeout=600) as http:
                    for body in requests_of(index, requests):
                        answer = http.post("/sdapi/v1/txt2img", json=body)
                        if answer.status_code != 200 or len(answer.json()["images"]) != 1:
                            failures.append(f"{answer.status_code}: {answer.text[:200]}")

            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - started
            if failures:
                sys.exit(f"{len(failures)} requests failed, e.g. {failures[0]}")
            return clients * requests / seconds
        finally:
            process.terminate()
            process.wait(timeout=60)


def diffusers_images_per_second(clients: int, requests: int, device: str | None) -> float:
    """The peer: diffusers' pipeline on the same file answering the same requests one at a time."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    sys.path.insert(0, str(Path(__file__).parent))
    from txt2img import write_configs

    from brushwork.models.single_file import load_single_file
    from brushwork.models.store import EMBEDDED_MODEL

    configs = Path(tempfile.mkdtemp()) / "configs"
    write_configs(load_single_file(EMBEDDED_MODEL), configs)
    pipe = StableDiffusionPipeline.from_single_file(str(EMBEDDED_MODEL), config=str(configs), local_files_only=True)
    pipe = pipe.to(device or "cpu")
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    bodies = [body for c in range(clients) for body in requests_of(c, requests)]

    def paint(body: dict) -> None:
        generator = torch.Generator("cpu").manual_seed(body["seed"])
        pipe(body["prompt"], num_inference_steps=body["steps"], guidance_scale=body["cfg_scale"], width=body["width"],
             height=body["height"], generator=generator)

    paint(bodies[0])  # warm-up
    started = time.perf_counter()
    for body in bodies:
        paint(body)
    return len(bodies) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=6, help="requests per client")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    grouped = serve_and_measure(True, args.clients, args.requests, args.device)
    alone = serve_and_measure(False, args.clients, args.requests, args.device)
    peer = diffusers_images_per_second(args.clients, args.requests, args.device)
    print(f"{args.clients} clients x {args.requests} requests, embedded model, 64x64, 20 steps Euler a, CFG 7, "
          f"{args.device or 'default device'}")
    print(f"{'':28}{'images/s':>10}")
    for name, value in (("brushwork, grouped", grouped), ("brushwork, --no-batching", alone),
                        ("diffusers, one at a time", peer)):
        print(f"{name:28}{value:10.2f}")
    print(f"ratio grouped/ungrouped {grouped / alone:.2f}, grouped/diffusers {grouped / peer:.2f}, "
          f"ungrouped/diffusers {alone / peer:.2f}")


if __name__ == "__main__":
    main()
