"""`brushwork train controlnet`: a ControlNet for any SD 1.x, 2.x or SDXL checkpoint from pairs of pictures.

As in Zhang et al. (2023) and diffusers' train_controlnet.py: the ControlNet starts as a copy of the U-Net's
encoder and middle block (`ControlNetModel.from_unet`), its residuals enter through zero-initialised
convolutions (so step 0 paints exactly as the base), and only the ControlNet learns: the base stays frozen.
The pairs are a folder of captioned target pictures and, in its subfolder `conditioning/` (or another
`conditioning` name), the control picture of each under the same name (an edge map, a mask, a scribble ...). Both are fitted to the same
aspect-ratio bucket; the targets are encoded once. Each step's batch, noise, timesteps and caption dropout come
from generators seeded by (seed, step), so a resumed run ends with the same weights as an uninterrupted one.
The output is a diffusers-named single `.safetensors` (float16), which brushwork, the A1111 extension and
ComfyUI load.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from brushwork.errors import BrushworkError
from brushwork.models.components import Components
from brushwork.train.dataset import PICTURE_SUFFIXES, fit_to_bucket, make_buckets, nearest_bucket
from brushwork.train.finetune import (
    Curation,
    FineTuneResult,
    Objective,
    RunControls,
    batch_captions,
    batch_order,
    curated_examples,
    encode_captions,
    encode_pictures,
    run_fine_tune,
    run_state,
)
from brushwork.train.optimize import Optimization
from brushwork.train.settings import StepSettings

CONDITIONING = "conditioning"  # the control pictures' folder inside the data folder


@dataclass(frozen=True)
class ControlNetTrainSettings:
    steps: int = 1000
    lr: float = 1e-5
    warmup: int = 0
    resolution: int = 512
    batch_size: int = 1
    caption_dropout: float = 0.0  # diffusers' proportion_empty_prompts: learn to follow the control alone
    seed: int = 0
    checkpoint_every: int = 100
    sample_every: int = 0
    sample_prompt: str = ""
    conditioning: str = CONDITIONING  # the data folder's subfolder of control pictures
    optimization: StepSettings = StepSettings()


def new_controlnet(components: Components):
    """A ControlNet copied from the U-Net, its control picture encoder downsampling as much as the VAE does
    (diffusers' default (16, 32, 96, 256) halves three times, for SD's factor 8)."""
    from diffusers import ControlNetModel

    halvings = len(components.vae.config.block_out_channels) - 1
    widths = (16, 32, 96, 256)[: halvings + 1] if halvings <= 3 else (16, 32, 96, 256) + (256,) * (halvings - 3)
    return ControlNetModel.from_unet(components.unet, conditioning_embedding_out_channels=widths)


def control_pictures(examples, data_dir: Path, folder: Path, resolution: int) -> list[torch.Tensor]:
    """Each example's control picture, fitted to the bucket its target takes, as [3, H, W] in 0..1 (once per
    repeat, in encode_pictures' order)."""
    buckets = make_buckets(resolution)
    found, missing = [], []
    for example in examples:
        relative = example.path.relative_to(data_dir)
        candidates = [folder / relative.with_suffix(suffix) for suffix in (relative.suffix, *PICTURE_SUFFIXES)]
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            missing.append(relative.as_posix())
            continue
        with Image.open(example.path) as target:
            bucket = nearest_bucket(target.size, buckets)
        with Image.open(path) as opened:
            control = fit_to_bucket(opened.convert("RGB"), bucket)
        tensor = torch.from_numpy(np.asarray(control, dtype=np.float32) / 255.0).permute(2, 0, 1)
        found += [tensor] * example.repeats
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise BrushworkError(f"train controlnet: {len(missing)} pictures have no control picture in {folder} "
                             f"(same name, any picture suffix): {shown}")
    return found


def train_controlnet(components: Components, data_dir: Path, output: Path, settings: ControlNetTrainSettings, *,
                     base_name: str, base_hash: str, resume: bool = False, progress: bool = True,
                     should_stop: Callable[[], bool] | None = None,
                     on_step: Callable[[str, int, float], None] | None = None, curation: Curation | None = None,
                     paint: Callable[..., Image.Image] | None = None) -> FineTuneResult:
    """`paint(prompt, seed, size, extensions=make)` paints through the Engine with the extensions `make()` gives:
    the sample pictures, with the ControlNet as it is, controlled by the first pair's control picture."""
    from brushwork.control.extension import ControlNetUnit

    if settings.steps < 1 or settings.batch_size < 1:
        raise BrushworkError("train controlnet: --steps and --batch-size must be at least 1")
    data_dir = Path(data_dir).expanduser()
    folder = data_dir / settings.conditioning
    if not folder.is_dir():
        raise BrushworkError(f"train controlnet: no control pictures folder {folder}; put each target's control "
                             f"picture there under the same name (brushwork data shapes --condition canny writes one)")
    state = run_state(output, {"settings": asdict(settings), "base": base_hash, "data": str(data_dir.resolve())},
                      resume)
    kept = curated_examples(data_dir, output, settings.resolution, "train controlnet", curation=curation,
                            exclude=folder)
    for module in components.modules():
        module.requires_grad_(False)
    pictures = encode_pictures(components, kept, settings.resolution)
    controls = control_pictures(kept, data_dir, folder, settings.resolution)
    unet = components.unet
    device = unet.device
    torch.manual_seed(settings.seed)
    controlnet = new_controlnet(components).to(device=device, dtype=torch.float32)
    controlnet.requires_grad_(True)
    optimization = Optimization(controlnet.parameters(), lr=settings.lr, weight_decay=1e-2,
                                settings=settings.optimization, device=device, modules=[controlnet])
    objective = Objective(components, settings.optimization.min_snr_gamma)

    start = 0
    saved = state.load("controlnet.pt") if resume else None
    if saved is not None:
        controlnet.load_state_dict(saved["controlnet"])
        optimization.load_state_dict(saved["optimization"])
        start = int(saved["step"])

    order = batch_order(pictures, settings.batch_size, settings.seed)

    def loss_of(micro: int) -> torch.Tensor:
        batch = order(micro)
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + micro)
        captions = batch_captions(pictures, batch, generator, settings.caption_dropout)
        noisy, timesteps, target = objective.noisy([pictures[i] for i in batch], generator)
        text = encode_captions(components, captions, [pictures[i].bucket for i in batch])
        hint = torch.stack([controls[i] for i in batch]).to(device)
        down, mid = controlnet(noisy, timesteps, encoder_hidden_states=text.context, controlnet_cond=hint,
                               added_cond_kwargs=text.added, return_dict=False)
        return objective.loss(unet, noisy, timesteps, target, text, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid)

    def checkpoint(done: int) -> None:
        if optimization.is_main:
            state.save("controlnet.pt", {"step": done, "optimization": optimization.state_dict(),
                                         "controlnet": {k: v.detach().clone() for k, v in controlnet.state_dict().items()}})

    def controlled_sample(prompt: str, seed: int, size: int) -> Image.Image:
        """A sample picture with the ControlNet as it is, controlled by the first pair's control picture."""
        picture = Image.fromarray((controls[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        hint = torch.from_numpy(np.asarray(picture.resize((size, size)), dtype=np.float32) / 255.0)
        hint = hint.permute(2, 0, 1)[None].to(device=device, dtype=unet.dtype)
        return paint(prompt, seed, size, extensions=lambda: [ControlNetUnit(
            controlnet, hint, weight=1.0, mode="Balanced", begin=0.0, end=1.0)])

    result = run_fine_tune("controlnet", start, settings, optimization, loss_of, checkpoint, [controlnet],
                           RunControls(progress, should_stop, on_step), samples=state.folder / "samples",
                           paint=controlled_sample if paint is not None else None, sample_prompt=settings.sample_prompt or pictures[0].caption,
                           warmup=settings.warmup)
    optimization.finish()
    if optimization.is_main:
        weights = {key: value.detach().to(torch.float16).cpu().contiguous()
                   for key, value in controlnet.state_dict().items()}
        metadata = {"brushwork_kind": "controlnet", "base_model": base_name, "base_sha256": base_hash,
                    "family": components.family, "settings": json.dumps(asdict(settings), default=str)}
        save_file(weights, str(output), metadata=metadata)
    return FineTuneResult(output, settings.steps, result.losses, result.seconds, len(kept))
