"""LoRA switching benchmark: brushwork's weight patches vs diffusers + peft, on the same SD 1.5-size weights.

    python bench/lora_switch.py                   # CPU, fp32, rank 16, 6 switches
    python bench/lora_switch.py --device cuda --dtype fp16 --rank 32

Random weights of the real SD 1.5 architecture and two kohya-layout LoRAs (every attention and feed-forward
Linear of the U-Net and the text encoder, rank --rank). A job switches from one LoRA to the other:

  brushwork   ModelPatcher: apply the job's LoRA to the shared weights, run, restore them exactly.
  diffusers   the same two files loaded as peft adapters once; per job `set_adapters` (unfused: the adapter
              runs beside each layer at every step) or `fuse_lora` / `unfuse_lora` (merged, like ours).

Printed: seconds per switch (apply + restore), the U-Net forward time with the LoRA in place (256x256, batch 2:
one CFG pair), the ratios, and whether the weights after the last restore equal the originals bit for bit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def kohya_lora(components, rank: int, seed: int) -> dict:
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for prefix, module in (("lora_unet_", components.unet), ("lora_te_", components.text_encoders[0])):
        for name, layer in module.named_modules():
            if not isinstance(layer, nn.Linear) or not any(part in name for part in ("attn", "ff", "mlp", "self_attn")):
                continue
            named = name if prefix == "lora_unet_" or name.startswith("text_model.") else "text_model." + name
            key = prefix + named.replace(".", "_")
            state[key + ".lora_down.weight"] = torch.randn(rank, layer.in_features, generator=generator) * 0.01
            state[key + ".lora_up.weight"] = torch.randn(layer.out_features, rank, generator=generator) * 0.01
            state[key + ".alpha"] = torch.tensor(float(rank))
    return state


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def unet_forward(components, device, dtype, runs: int = 3) -> float:
    import torch

    unet = components.unet
    latents = torch.randn(2, 4, 32, 32, device=device, dtype=dtype)
    context = torch.randn(2, 77, 768, device=device, dtype=dtype)
    times = []
    with torch.inference_mode():
        unet(latents, torch.tensor(500, device=device), encoder_hidden_states=context)  # warm-up, not timed
        for _ in range(runs):
            started = time.perf_counter()
            unet(latents, torch.tensor(500, device=device), encoder_hidden_states=context)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--switches", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    args = parser.parse_args()

    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file

    from brushwork.models.patches.lora import LoraPatch, load_lora
    from txt2img import build_components

    device, dtype = torch.device(args.device), torch.float16 if args.dtype == "fp16" else torch.float32
    components = build_components("sd1")
    for module in components.modules():
        module.to(device, dtype)
    workdir = Path(tempfile.mkdtemp(prefix="brushwork-lora-bench-"))
    files = []
    for seed in (1, 2):
        path = workdir / f"lora-{seed}.safetensors"
        save_file(kohya_lora(components, args.rank, seed), path)
        files.append(path)
    print(f"SD 1.5-size weights, two rank-{args.rank} LoRAs of {files[0].stat().st_size / 2**20:.1f} MB, "
          f"{args.device} {args.dtype}", flush=True)

    originals = {name: tensor.detach().clone() for name, tensor in components.unet.state_dict().items()}
    base_forward = unet_forward(components, device, dtype)

    # brushwork: parse once (cached by the engine between jobs), then apply + restore per job.
    started = time.perf_counter()
    loras = [load_lora(path, components) for path in files]
    parse = (time.perf_counter() - started) / len(files)
    ours, ours_forward = [], 0.0
    for switch in range(args.switches):
        started = time.perf_counter()
        with components.patcher.applied([LoraPatch(loras[switch % 2], 0.8, 0.8)]):
            applied = time.perf_counter()
            if switch == 0:
                ours_forward = unet_forward(components, device, dtype)
            resumed = time.perf_counter()
        ours.append(applied - started + time.perf_counter() - resumed)
    exact = all(torch.equal(originals[name], tensor) for name, tensor in components.unet.state_dict().items())

    # diffusers + peft on the same modules and files.
    pipeline = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoders[0], tokenizer=components.tokenizers[0],
        unet=components.unet, scheduler=EulerDiscreteScheduler.from_config(components.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    started = time.perf_counter()
    for index, path in enumerate(files):
        pipeline.load_lora_weights(str(path), adapter_name=f"lora{index}")
    peft_load = (time.perf_counter() - started) / len(files)
    unfused, fused = [], []
    for switch in range(args.switches):
        started = time.perf_counter()
        pipeline.set_adapters([f"lora{switch % 2}"], adapter_weights=[0.8])
        unfused.append(time.perf_counter() - started)
    peft_forward = unet_forward(components, device, dtype)
    for switch in range(args.switches):
        pipeline.set_adapters([f"lora{switch % 2}"], adapter_weights=[0.8])
        started = time.perf_counter()
        pipeline.fuse_lora(adapter_names=[f"lora{switch % 2}"], lora_scale=1.0)
        pipeline.unfuse_lora()
        fused.append(time.perf_counter() - started)
    pipeline.unload_lora_weights()
    base_again = unet_forward(components, device, dtype)  # the same measurement at the end: the run's noise
    peft_exact = all(torch.equal(originals[name], tensor) for name, tensor in components.unet.state_dict().items())

    rows = [
        ("read one LoRA file", parse, peft_load),
        ("switch: apply + restore (brushwork) / set_adapters (peft, unfused)", median(ours), median(unfused)),
        ("switch: apply + restore (brushwork) / fuse + unfuse (peft)", median(ours), median(fused)),
        ("U-Net forward with the LoRA (brushwork merged / peft unfused)", ours_forward, peft_forward),
    ]
    print(f"U-Net forward without LoRA: {base_forward:.3f} s at the start, {base_again:.3f} s at the end")
    for label, mine, theirs in rows:
        print(f"{label}: brushwork {mine:.3f} s, diffusers {theirs:.3f} s, ratio {mine / theirs:.2f}")
    print(f"weights bit-identical after restore: brushwork {exact}, diffusers fuse/unfuse + unload {peft_exact}")


if __name__ == "__main__":
    main()
