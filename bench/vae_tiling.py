"""VAE decode benchmark: tiled (brushwork.engine.tiling) vs untiled, peak memory and time, on CPU.

    python bench/vae_tiling.py                              # 2048x2048, untiled vs 512 px tiles
    python bench/vae_tiling.py --sizes 1024 1536 2048 --tiles 512 1024

An SD-size VAE (AutoencoderKL, block_out_channels (128, 256, 512, 512), layers_per_block 2: the
SD 1.x/2.x/SDXL architecture) with seeded random weights decodes seeded latents (smooth noise, so
they have structure) once per variant, each variant in its own fresh process so that its peak
memory is its own. Peak memory is the process's RssAnon sampled every 2 ms, less what the model and
latents took before the decode; a variant that outgrows the memory free when it starts is stopped
and reported as such. Printed: seconds, peak MiB, and the max/mean difference between each tiled
picture and the untiled one in 8-bit levels (random weights exaggerate it: see test_tiling.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEED = 0
HEADROOM_MB = 1536  # left free for everyone else when a variant is stopped for memory


def rss_anon_mb(pid: int | str = "self") -> float:
    """Private resident memory of a process (RssAnon), MiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def available_mb() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """The highest RssAnon of this process while the block runs, sampled every 2 ms in a thread."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.is_set():
            self.peak_mb = max(self.peak_mb, rss_anon_mb())
            time.sleep(0.002)


def worker(args: argparse.Namespace) -> None:
    """Decode once with one variant (tile 0 = untiled); save the 8-bit picture, print one JSON line."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL

    from brushwork.engine.tiling import decode_latents

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512,
    ).eval()
    side = args.size // 8
    generator = torch.Generator().manual_seed(SEED)
    latents = F.interpolate(torch.randn(1, 4, side // 8, side // 8, generator=generator), size=(side, side), mode="bicubic")
    latents = latents + 0.3 * torch.randn(latents.shape, generator=generator)
    baseline = rss_anon_mb()
    with PeakRss() as peak, torch.no_grad():
        started = time.perf_counter()
        tile_above = None if args.tile == 0 else 0
        pixels = decode_latents(vae, latents, tile_above_pixels=tile_above, tile_size=args.tile or 512)
        seconds = time.perf_counter() - started
    image = ((pixels[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.save(args.workdir / f"decode-{args.size}-{args.tile}.npy", np.ascontiguousarray(image))
    print(json.dumps({"seconds": seconds, "peak_mb": peak.peak_mb - baseline, "baseline_mb": baseline}))


def run_variant(size: int, tile: int, args: argparse.Namespace) -> dict:
    """One variant in a fresh process, stopped if it would leave less than HEADROOM_MB free."""
    limit_mb = available_mb() - HEADROOM_MB
    command = [sys.executable, __file__, "--worker", "--sizes", str(size), "--tiles", str(tile),
               "--threads", str(args.threads), "--workdir", str(args.workdir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    highest = 0.0
    while process.poll() is None:
        highest = max(highest, rss_anon_mb(process.pid))
        if highest > limit_mb:
            process.kill()
            process.wait()
            return {"stopped": f"stopped above {limit_mb / 1024:.1f} GiB (the memory free at its start)"}
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        return {"stopped": f"failed (exit {process.returncode}): {stderr.strip().splitlines()[-1:]}"}
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048], help="picture sides in pixels")
    parser.add_argument("--tiles", type=int, nargs="+", default=[512], help="tile sides in pixels (0: untiled)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/brushwork-bench"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        args.size, args.tile = args.sizes[0], args.tiles[0]
        worker(args)
        return

    import numpy as np

    print(f"SD-size VAE decode on CPU ({args.threads} threads), random seeded weights; "
          f"{available_mb() / 1024:.1f} GiB available at start", flush=True)
    print(f"{'picture':>11} {'variant':>12} {'seconds':>9} {'peak MiB':>9} {'max diff':>9} {'mean diff':>10}", flush=True)
    for size in args.sizes:
        untiled = None
        for tile in [0, *[t for t in args.tiles if t != 0]]:
            result = run_variant(size, tile, args)
            name = "untiled" if tile == 0 else f"tiles {tile}"
            if "stopped" in result:
                print(f"{f'{size}x{size}':>11} {name:>12}  {result['stopped']}", flush=True)
                continue
            picture = np.load(args.workdir / f"decode-{size}-{tile}.npy").astype(np.int16)
            if tile == 0:
                untiled, max_diff, mean_diff = picture, "-", "-"
            elif untiled is None:
                max_diff = mean_diff = "n/a"
            else:
                difference = np.abs(picture - untiled)
                max_diff, mean_diff = str(difference.max()), f"{difference.mean():.2f}"
            print(f"{f'{size}x{size}':>11} {name:>12} {result['seconds']:9.1f} {result['peak_mb']:9.0f} "
                  f"{max_diff:>9} {mean_diff:>10}", flush=True)


if __name__ == "__main__":
    main()
