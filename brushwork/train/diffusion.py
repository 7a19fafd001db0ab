"""Stage 2: train the text encoder and the U-Net together with the diffusion loss.

Per step, as in diffusers' `train_text_to_image.py`: take a batch of pre-encoded latents (times the
scaling factor), add noise at uniformly drawn timesteps of the model's schedule, and regress the
scheduler's target: the noise (epsilon prediction) or v = sqrt(abar) * noise - sqrt(1 - abar) * latent
(v prediction). 10% of captions are replaced by "" so the same network is also the unconditional model
classifier-free guidance needs. The loss is Min-SNR weighted so nearly clean timesteps do not dominate:
in terms of the error on the picture, weight min(SNR, 5) for epsilon (Hang et al. 2023) and
min(SNR + 1, 5) for v, which keeps the noisiest timesteps - where the layout is decided - at weight 1
instead of ~SNR. AdamW with warm-up and cosine decay; the saved model is the exponential moving
average of the weights.

Given `LayoutTargets`, three settings teach where objects go (see `brushwork.train.layout`): part of each
batch drawn from positioned captions at high noise, extra loss weight on object pixels, and the text
encoder's position probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from brushwork.train.data import batch_indices, seeded_generator
from brushwork.train.ema import EMA
from brushwork.train.layout import NO_POSITION, LayoutTargets, PositionProbe
from brushwork.train.loop import learning_rate
from brushwork.train.settings import TrainSettings

STAGE = "diffusion"


@dataclass
class LatentSet:
    """The data set as stage 2 sees it: VAE latents (unscaled) and caption token ids."""

    mean: torch.Tensor  # [N, C, h, w] float32: the VAE posterior means
    ids: torch.Tensor  # [N, 77] int32
    scale: float  # the VAE scaling factor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ids": self.ids, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict) -> "LatentSet":
        return cls(mean=data["mean"], ids=data["ids"], scale=float(data["scale"]))


class DiffusionTrainer:
    """Holds the two trained modules, their EMA copies and the optimizer; `step(i)` trains on batch i."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        latents: LatentSet,
        empty_ids: torch.Tensor,
        scheduler_config: dict,
        settings: TrainSettings,
        layout: LayoutTargets | None = None,
    ):
        self.unet = unet.train()
        self.text_encoder = text_encoder.train()
        self.latents = latents
        self.empty_ids = empty_ids.to(torch.int32).reshape(1, -1)
        self.settings = settings
        schedule = DDPMScheduler.from_config(scheduler_config)
        self.alphas_cumprod = schedule.alphas_cumprod.float()
        self.predicts_v = schedule.config.prediction_type == "v_prediction"
        self.num_timesteps = int(schedule.config.num_train_timesteps)
        self.layout = layout
        self.probe = None
        if layout is not None and settings.position_loss_weight > 0:
            self.probe = PositionProbe(text_encoder.config.hidden_size, seeded_generator("probe", settings.seed))
        modules = (unet, text_encoder) + ((self.probe,) if self.probe is not None else ())
        self.params = [p for module in modules for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, betas=(0.9, 0.999), weight_decay=settings.weight_decay)
        self.ema_unet = EMA(unet, settings.ema_decay)
        self.ema_text = EMA(text_encoder, settings.ema_decay)

    # -- one step ---------------------------------------------------------------------------------------

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """The inputs of step `index`: noisy latents, timesteps, the noise to predict, token ids, loss weights."""
        s = self.settings
        generator = seeded_generator(STAGE, s.seed, index)
        picked = batch_indices(len(self.latents), s.batch_size, index, s.seed)
        noise = torch.randn((len(picked), *self.latents.mean.shape[1:]), generator=generator)
        timesteps = torch.randint(0, self.num_timesteps, (len(picked),), generator=generator)
        dropped = torch.rand(len(picked), generator=generator) < s.caption_dropout
        if self.layout is not None and s.layout_fraction > 0:
            picked, timesteps = self._layout_share(picked, timesteps, index)
        clean = self.latents.mean[picked] * self.latents.scale
        ids = torch.where(dropped[:, None], self.empty_ids, self.latents.ids[picked]).long()
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise
        snr = alpha_bar.flatten() / (1 - alpha_bar.flatten())
        if self.predicts_v:
            target = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * clean
            # A v error is sqrt(SNR + 1) picture errors: weight min(SNR + 1, gamma) on the picture.
            weights = torch.clamp(snr + 1, max=s.snr_gamma) / (snr + 1) if s.snr_gamma > 0 else torch.ones_like(snr)
        else:
            target = noise
            weights = torch.clamp(snr, max=s.snr_gamma) / snr if s.snr_gamma > 0 else torch.ones_like(snr)
        batch = {"noisy": noisy, "timesteps": timesteps, "target": target, "ids": ids, "weights": weights}
        if self.layout is not None:
            batch["positions"] = torch.where(dropped, NO_POSITION, self.layout.positions[picked])
            if self.layout.masks is not None and s.foreground_weight > 0:
                batch["pixel_weights"] = 1.0 + s.foreground_weight * self.layout.masks[picked]
        return batch

    def _layout_share(self, picked: torch.Tensor, timesteps: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Swap the first layout_fraction of the batch for positioned pictures at t in the upper half.

        Drawn from a generator of their own, so the rest of the batch is what it would be without them.
        """
        positioned = self.layout.positioned
        share = round(len(picked) * self.settings.layout_fraction)
        if share == 0 or len(positioned) == 0:
            return picked, timesteps
        generator = seeded_generator("layout", self.settings.seed, index)
        picked, timesteps = picked.clone(), timesteps.clone()
        picked[:share] = positioned[torch.randint(len(positioned), (share,), generator=generator)]
        timesteps[:share] = torch.randint(self.num_timesteps // 2, self.num_timesteps, (share,), generator=generator)
        return picked, timesteps

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.settings.bf16):
            context = self.text_encoder(batch["ids"]).last_hidden_state
            prediction = self.unet(batch["noisy"], batch["timesteps"], encoder_hidden_states=context).sample
        error = F.mse_loss(prediction.float(), batch["target"], reduction="none")
        if "pixel_weights" in batch:
            error = error * batch["pixel_weights"]
        loss = (error.mean(dim=(1, 2, 3)) * batch["weights"]).mean()
        if self.probe is not None:
            loss = loss + self.settings.position_loss_weight * self.probe.loss(context, batch["positions"])
        return loss

    def step(self, index: int) -> float:
        s = self.settings
        lr = learning_rate(index, s.steps, s.lr, s.warmup_steps, s.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.loss(self.batch(index))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip)
        self.optimizer.step()
        self.ema_unet.update(self.unet, index)
        self.ema_text.update(self.text_encoder, index)
        return loss.detach().item()

    @torch.no_grad()
    def evaluation_loss(self, indices: list[int], use_ema: bool = False) -> float:
        """Mean loss over the batches of steps `indices`, without training (a fixed yardstick for tests)."""
        unet, text = (self.ema_unet.shadow, self.ema_text.shadow) if use_ema else (self.unet, self.text_encoder)
        saved = self.unet, self.text_encoder
        self.unet, self.text_encoder = unet, text
        try:
            return sum(float(self.loss(self.batch(i))) for i in indices) / len(indices)
        finally:
            self.unet, self.text_encoder = saved

    # -- checkpoints ----------------------------------------------------------------------------------

    def state_dict(self, step: int) -> dict:
        return {
            "step": step,
            **({"position_probe": self.probe.state_dict()} if self.probe is not None else {}),
            "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
            "ema_text_encoder": self.ema_text.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> int:
        """Restore a checkpoint; returns the number of steps it had done."""
        self.unet.load_state_dict(state["unet"])
        if self.probe is not None:
            self.probe.load_state_dict(state["position_probe"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.ema_unet.load_state_dict(state["ema_unet"])
        self.ema_text.load_state_dict(state["ema_text_encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])
