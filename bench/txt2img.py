"""txt2img benchmark: brushwork vs diffusers' own pipeline on the same SD-size weights, one run.

    python bench/txt2img.py                       # CPU: SD 1.5 size, 256x256, 4 steps
    python bench/txt2img.py --device cuda --size 512 --steps 30 --dtype fp16
    python bench/txt2img.py --family sdxl --device cuda --size 1024 --steps 30 --dtype fp16
    python bench/txt2img.py --family embedded     # the shipped model: 64x64, 20 steps

Random weights of the real architecture are written once as an A1111-style single file (seeded,
under --workdir); `--family embedded` takes the shipped model's own file and a prompt it knows. Each
side then runs in its own fresh process, so peak memory is its own: loading the file (diffusers:
`from_single_file` with the matching local config folder), one warm-up image, then --images timed
images, same prompt, seed, sampler (DPM++ 2M) and CFG. Printed: seconds per image, peak private
memory (CPU: sampled RssAnon; GPU: torch's peak allocation), the ratios, and the largest pixel
difference between the two sides' pictures.
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

PROMPTS = {  # plain: diffusers has no emphasis syntax
    "sd1": ("a cyberpunk street at night, neon lights, rain", "blurry, lowres"),
    "sdxl": ("a cyberpunk street at night, neon lights, rain", "blurry, lowres"),
    "embedded": ("a red circle on a blue background", ""),
}
DEFAULTS = {"embedded": {"size": 64, "steps": 20}, "sd1": {"size": 256, "steps": 4}, "sdxl": {"size": 256, "steps": 4}}
SEED = 1234


def build_components(family: str):
    """Seeded random weights in the real SD 1.5 / SDXL base shapes."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from brushwork.models.components import Components
    from brushwork.models.detect import BASE_SCHEDULER_CONFIG
    from brushwork.models.single_file import shipped_tokenizer

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
        scaling_factor=0.13025 if family == "sdxl" else 0.18215,
    )
    clip_l = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    if family == "sd1":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        encoders = [CLIPTextModel(clip_l)]
        tokenizers = [shipped_tokenizer(open_clip=False)]
        size = 512
    else:
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        big_g = CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                               num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
        encoders = [CLIPTextModel(clip_l), CLIPTextModelWithProjection(big_g)]
        tokenizers = [shipped_tokenizer(open_clip=False), shipped_tokenizer(open_clip=True)]
        size = 1024
    return Components(family=family, unet=unet.eval(), vae=vae.eval(), text_encoders=[e.eval() for e in encoders],
                      tokenizers=tokenizers, scheduler_config=dict(BASE_SCHEDULER_CONFIG), native_size=size)


def prepare(family: str, workdir: Path) -> tuple[Path, Path]:
    """The checkpoint file and a diffusers config folder (configs only, no weights) for the peer."""
    if family == "embedded":
        from brushwork.models.single_file import load_single_file
        from brushwork.models.store import EMBEDDED_MODEL

        configs = workdir / "embedded-configs"
        if not (configs / "model_index.json").exists():
            write_configs(load_single_file(EMBEDDED_MODEL), configs)
        return EMBEDDED_MODEL, configs
    checkpoint = workdir / f"random-{family}.safetensors"
    configs = workdir / f"random-{family}-configs"
    if checkpoint.exists() and (configs / "model_index.json").exists():
        return checkpoint, configs
    import torch

    from brushwork.models.single_file import save_single_file

    workdir.mkdir(parents=True, exist_ok=True)
    print(f"writing random {family} weights to {checkpoint} ...", flush=True)
    components = build_components(family)
    save_single_file(components, checkpoint, dtype=torch.float16)
    write_configs(components, configs)
    return checkpoint, configs


def write_configs(components, configs: Path) -> None:
    """The diffusers folder layout of `components`, configs and tokenizers only, for `from_single_file(config=...)`."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    family = components.family
    names = {"unet": components.unet, "vae": components.vae, "text_encoder": components.text_encoders[0],
             "tokenizer": components.tokenizers[0]}
    if family == "sdxl":
        names |= {"text_encoder_2": components.text_encoders[1], "tokenizer_2": components.tokenizers[1]}
    for folder, module in names.items():
        if hasattr(module, "save_config"):
            module.save_config(str(configs / folder))
        elif hasattr(module, "save_pretrained") and folder.startswith("tokenizer"):
            module.save_pretrained(str(configs / folder))
        else:
            module.config.save_pretrained(str(configs / folder))
    EulerDiscreteScheduler.from_config(components.scheduler_config).save_config(str(configs / "scheduler"))
    pipeline_cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    index = {"_class_name": pipeline_cls.__name__, "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    for folder, module in names.items():
        library = "transformers" if folder.startswith(("text_encoder", "tokenizer")) else "diffusers"
        index[folder] = [library, type(module).__name__]
    if family == "sd1":
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    (configs / "model_index.json").write_text(json.dumps(index, indent=2))


class PeakMemory:
    """Peak private memory: torch's peak allocation on CUDA, else RssAnon sampled every 5 ms."""

    def __init__(self, device: str):
        self.device = device
        self.peak_kb = 0
        self._done = threading.Event()

    def __enter__(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            self.peak_kb = torch.cuda.max_memory_allocated() // 1024
        else:
            self._done.set()
            self._thread.join()

    def _watch(self):
        while not self._done.is_set():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            time.sleep(0.005)


def worker(args) -> None:
    """One side of the comparison, in its own process; prints one JSON line."""
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    prompt, negative = PROMPTS[args.family]
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    with PeakMemory(args.device) as memory:
        started = time.perf_counter()
        if args.worker == "brushwork":
            from brushwork.engine.engine import Engine
            from brushwork.models.store import ModelStore
            from brushwork.recipe import Recipe

            engine = Engine(ModelStore(allow_paths=True, device=args.device, dtype=dtype))
            recipe = Recipe(prompt=prompt, negative_prompt=negative, model=str(args.checkpoint), sampler="DPM++ 2M",
                            steps=args.steps, cfg_scale=7, seed=SEED, width=args.size, height=args.size)
            engine.store.load(recipe.model)

            def make():
                return np.asarray(engine.run(recipe).images[0].image)
        else:
            from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

            cls = StableDiffusionXLPipeline if args.family == "sdxl" else StableDiffusionPipeline
            pipe = cls.from_single_file(str(args.checkpoint), config=str(args.configs), local_files_only=True,
                                        torch_dtype=dtype).to(args.device)
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
            pipe.set_progress_bar_config(disable=True)

            def make():
                generator = torch.Generator("cpu").manual_seed(SEED)
                return np.asarray(pipe(prompt, negative_prompt=negative, num_inference_steps=args.steps, guidance_scale=7,
                                       width=args.size, height=args.size, generator=generator).images[0])
        load_seconds = time.perf_counter() - started
        make()  # warm-up: first-call allocations and kernel selection
        times = []
        for _ in range(args.images):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            image = make()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    np.save(args.workdir / f"image-{args.worker}.npy", image)
    print(json.dumps({"load_s": load_seconds, "image_s": sorted(times)[len(times) // 2], "peak_mb": memory.peak_kb / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=tuple(PROMPTS), default="sd1")
    parser.add_argument("--size", type=int, help="picture side (default: 64 for embedded, else 256)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: 20 for embedded, else 4)")
    parser.add_argument("--images", type=int, default=3, help="timed images per side (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/brushwork-bench"))
    parser.add_argument("--worker", choices=("brushwork", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--configs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name, value in DEFAULTS[args.family].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.worker:
        worker(args)
        return

    import numpy as np

    checkpoint, configs = prepare(args.family, args.workdir)
    results = {}
    for side in ("diffusers", "brushwork"):
        command = [sys.executable, __file__, "--worker", side, "--checkpoint", str(checkpoint), "--configs", str(configs),
                   *[f"--{k}={v}" for k, v in vars(args).items() if k in ("family", "size", "steps", "images", "device", "dtype", "workdir")]]
        output = subprocess.run(command, capture_output=True, text=True)
        if output.returncode != 0:
            sys.exit(f"{side} failed:\n{output.stderr[-3000:]}")
        results[side] = json.loads(output.stdout.strip().splitlines()[-1])
    ours, theirs = results["brushwork"], results["diffusers"]
    difference = np.abs(np.load(args.workdir / "image-brushwork.npy").astype(int)
                        - np.load(args.workdir / "image-diffusers.npy").astype(int)).max()
    print(f"{args.family} {args.size}x{args.size}, {args.steps} steps DPM++ 2M, CFG 7, {args.dtype} on {args.device}")
    print(f"{'':12}{'s/image':>10}{'peak MB':>10}{'load s':>9}")
    for side in ("diffusers", "brushwork"):
        r = results[side]
        print(f"{side:12}{r['image_s']:10.2f}{r['peak_mb']:10.0f}{r['load_s']:9.1f}")
    print(f"ratio brushwork/diffusers: time {ours['image_s'] / theirs['image_s']:.3f}, "
          f"peak memory {ours['peak_mb'] / theirs['peak_mb']:.3f}; max pixel difference {difference}")


if __name__ == "__main__":
    main()
