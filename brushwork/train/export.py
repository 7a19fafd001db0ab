"""Writing the trained model as an ordinary single-file checkpoint, and sample grids made from it.

The file is what any SD 1.x checkpoint is (ldm key layout, `save_single_file`, fp16), plus:

* safetensors metadata `modelspec.resolution` = the native size (64x64), which the loader reads;
* safetensors metadata `modelspec.prediction_type` (what the U-Net predicts), read by the loader too;
* a sibling A1111 yaml (`model.yaml` beside `model.safetensors`) holding `scale_factor`, the VAE
  latent scaling this VAE needs instead of SD's 0.18215, `linear_start`/`linear_end`, the noise
  schedule the model was trained with (`ModelSpec.beta_end`), and `parameterization` ("v" or "eps").

Sample grids go through `Engine.run` from that file, exactly as a user's pictures would.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel

from brushwork.models.components import Components
from brushwork.models.detect import BASE_SCHEDULER_CONFIG
from brushwork.models.single_file import save_single_file, shipped_tokenizer

SAMPLE_PROMPTS = (
    "a red circle",
    "a blue square on a yellow background",
    "a green triangle in the top left corner",
    "two white stars on a black background",
    "three small pink crosses",
    "a large orange square at the bottom",
    "a purple circle on the right",
    "a yellow circle",  # a held-out colour/shape pair: never drawn in training
)
SAMPLE_SEEDS = 4


def assemble(
    vae: AutoencoderKL, text_encoder: CLIPTextModel, unet: UNet2DConditionModel, scale: float, native_size: int,
    beta_end: float = BASE_SCHEDULER_CONFIG["beta_end"], prediction_type: str = "epsilon",
) -> Components:
    """The trained modules as Components, with the VAE's scaling factor set to `scale`, SD's noise
    schedule ending at `beta_end`, and the U-Net predicting `prediction_type`."""
    vae.register_to_config(scaling_factor=float(scale))
    return Components(
        family="sd1",
        unet=unet,
        vae=vae,
        text_encoders=[text_encoder],
        tokenizers=[shipped_tokenizer(open_clip=False)],
        scheduler_config=dict(BASE_SCHEDULER_CONFIG, beta_end=float(beta_end), prediction_type=prediction_type),
        native_size=native_size,
    )


def write_model(components: Components, path: str | Path, metadata: dict[str, str] | None = None) -> int:
    """Write the fp16 checkpoint (and the sibling yaml `save_single_file` adds); returns its size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_single_file(components, path, dtype=torch.float16, metadata=metadata)
    return path.stat().st_size


def sample_grid(
    model_path: str | Path,
    out_path: str | Path,
    *,
    prompts: tuple[str, ...] = SAMPLE_PROMPTS,
    seeds: int = SAMPLE_SEEDS,
    seed: int = 0,
    steps: int = 20,
    cfg_scale: float = 7.0,
    hash_cache: Path | None = None,
) -> Path:
    """One row per prompt, one column per seed, made by the Engine from the checkpoint file."""
    from brushwork.engine.engine import Engine
    from brushwork.models.store import ModelStore
    from brushwork.recipe import Recipe

    engine = Engine(ModelStore(allow_paths=True, hash_cache=hash_cache))
    rows = []
    for prompt in prompts:
        recipe = Recipe(prompt=prompt, model=str(model_path), seed=seed, steps=steps, cfg_scale=cfg_scale, batch_size=seeds)
        rows.append([generated.image for generated in engine.run(recipe).images])
    side = rows[0][0].width
    grid = Image.new("RGB", (side * seeds, side * len(rows)), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image, (c * side, r * side))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_path)
    out_path.with_suffix(".txt").write_text(
        f"rows (top to bottom), seeds {seed}..{seed + seeds - 1}, {steps} steps, CFG {cfg_scale}:\n"
        + "\n".join(prompts) + "\n",
        encoding="utf-8",
    )
    return out_path
