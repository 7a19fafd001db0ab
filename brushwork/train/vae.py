"""Stage 1: train the VAE on the pictures, then encode the whole data set once.

The VAE is trained as a plain autoencoder: pictures are rebuilt from the posterior mean. Sampling the
posterior as SD did slows a from-scratch VAE down several times over, and a latent whose std is ignored
needs no KL term, only a small L2 pull on the latents (the mean part of the KL) to keep them near the origin.
The VAE is convolutional, so it trains on random crops (32x32 of 64x64): a quarter of the cost per
picture, and the same edges and colours to learn. Loss per batch: L1 between picture and reconstruction,
plus L1 between their horizontal and vertical pixel differences (edges stay crisp without a perceptual
network or a GAN), plus that L2 term.

Afterwards every picture is encoded once, so stage 2 never runs the encoder, and the latent scaling factor
is set as SD's was: one over the latents' spread (here their root mean square, so scaled latents have
unit second moment).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from brushwork.train.data import ShapesData, batch_indices, seeded_generator, to_model_range
from brushwork.train.loop import LoopHooks, LoopResult, learning_rate, run_steps
from brushwork.train.settings import TrainSettings
from brushwork.train.state import TrainingState

STAGE = "vae"
ENCODE_BATCH = 256


def vae_loss(vae: AutoencoderKL, pixels: torch.Tensor, settings: TrainSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """The stage 1 loss of a batch of [-1, 1] pictures, and its parts (for logging)."""
    latents = vae.encode(pixels).latent_dist.mean
    reconstruction = vae.decode(latents).sample
    l1 = F.l1_loss(reconstruction, pixels)
    edges = sum(F.l1_loss(torch.diff(reconstruction, dim=d), torch.diff(pixels, dim=d)) for d in (-1, -2))
    pull = 0.5 * latents.pow(2).mean()
    loss = l1 + settings.vae_edge_weight * edges + settings.vae_latent_weight * pull
    return loss, {"l1": l1.detach().item(), "edges": edges.detach().item(), "latent_l2": pull.detach().item()}


def random_crops(images: torch.Tensor, side: int, generator: torch.Generator, align: int = 4) -> torch.Tensor:
    """A `side` x `side` crop of each picture at a random offset on an `align`-pixel grid (the VAE's latent grid)."""
    slots = (images.shape[-1] - side) // align + 1
    offsets = torch.randint(0, slots, (len(images), 2), generator=generator) * align
    return torch.stack([image[:, y : y + side, x : x + side] for image, (y, x) in zip(images, offsets.tolist())])


def make_optimizer(vae: AutoencoderKL, settings: TrainSettings) -> torch.optim.AdamW:
    return torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)


def train_vae(
    vae: AutoencoderKL, data: ShapesData, settings: TrainSettings, state: TrainingState, hooks: LoopHooks
) -> LoopResult:
    """Train `vae` in place for settings.vae_steps steps, continuing from `state` when it holds a stage 1 checkpoint."""
    optimizer = make_optimizer(vae, settings)
    start, elapsed_before = 0, 0.0
    saved = state.load("vae.pt")
    if saved is not None:
        vae.load_state_dict(saved["vae"])
        optimizer.load_state_dict(saved["optimizer"])
        start, elapsed_before = int(saved["step"]), float(saved.get("elapsed", 0.0))
    session_started = time.perf_counter()
    vae.train()
    warmup = min(100, settings.vae_steps // 10)

    def step(index: int) -> float:
        images = data.images[batch_indices(len(data), settings.vae_batch_size, index, settings.seed)]
        if settings.vae_crop and settings.vae_crop < data.size:
            images = random_crops(images, settings.vae_crop, seeded_generator(STAGE, settings.seed, index))
        pixels = to_model_range(images)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(index, settings.vae_steps, settings.vae_lr, warmup, 0.05)
        loss, _ = vae_loss(vae, pixels, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), settings.grad_clip)
        optimizer.step()
        return loss.detach().item()

    def checkpoint(done: int) -> None:
        elapsed = elapsed_before + time.perf_counter() - session_started
        state.save("vae.pt", {"step": done, "vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "elapsed": elapsed})

    result = run_steps(STAGE, start, settings.vae_steps, step, _with_checkpoint(hooks, checkpoint))
    result.elapsed_total = elapsed_before + result.seconds
    vae.eval()
    return result


def _with_checkpoint(hooks: LoopHooks, checkpoint) -> LoopHooks:
    return LoopHooks(
        checkpoint=checkpoint, checkpoint_every=hooks.checkpoint_every, sample=None, sample_every=0,
        should_stop=hooks.should_stop, on_step=hooks.on_step, progress=hooks.progress,
    )


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """The latents (posterior means, unscaled) [N, C, h, w] of every picture."""
    vae.eval()
    means = [vae.encode(to_model_range(images[start : start + ENCODE_BATCH])).latent_dist.mean
             for start in range(0, len(images), ENCODE_BATCH)]
    return torch.cat(means).float()


def latent_scale(means: torch.Tensor) -> float:
    """The VAE scaling factor: 1 / root-mean-square of the latents."""
    return float(1.0 / means.float().pow(2).mean().sqrt().clamp_min(1e-6))


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Encode (posterior mean) and decode uint8 pictures; returns uint8 pictures."""
    vae.eval()
    latents = vae.encode(to_model_range(images)).latent_dist.mean
    pixels = vae.decode(latents).sample
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
