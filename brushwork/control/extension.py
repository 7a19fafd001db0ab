"""ControlNet and T2I-Adapter units as denoiser extensions (engine/extensions.py).

A unit adds its network's residuals to the U-Net's skip connections at every evaluation between its guidance
start and end, scaled as the A1111 ControlNet extension scales them:

    Balanced                        every residual times the weight, in both CFG halves
    My prompt is more important     "soft injection": the residuals fade towards the U-Net's outer (high
                                    resolution) blocks, weight * 0.825 ** (12 - i) for the 13 ControlNet
                                    residuals (mid block: i = 12), weight * (0.25, 0.62, 0.825, 1) for an
                                    adapter's 4 feature maps
    ControlNet is more important    soft injection, and the residuals go to the conditional half only, so CFG
                                    pushes towards the control as well as towards the prompt

With weight 1 and Balanced, a unit is exactly diffusers' StableDiffusionControlNetPipeline (several units:
its MultiControlNetModel, whose residuals add up in order) and StableDiffusionAdapterPipeline.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from brushwork.engine.extensions import DenoiseContext, Extension

# The extension's soft-injection factors: a ControlNet has 12 down residuals and 1 mid residual.
_CONTROLNET_SOFT_BASE = 0.825
_ADAPTER_SOFT = (0.25, 0.62, 0.825, 1.0)


def hint_tensor(image: Image.Image, channels: int, device, dtype) -> torch.Tensor:
    """A control picture as the networks take it: [1, channels, H, W] in 0..1 (diffusers' control image
    processor does no normalisation); one-channel adapters (sketch, canny) get the picture's luminance."""
    picture = image.convert("L" if channels == 1 else "RGB")
    pixels = np.asarray(picture, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(pixels)
    tensor = tensor[None, None] if channels == 1 else tensor.permute(2, 0, 1)[None]
    return tensor.to(device=device, dtype=dtype)


def soft_scales(weight: float, count: int, adapter: bool) -> list[float]:
    """The per-residual scales of "My prompt is more important" / "ControlNet is more important"."""
    if adapter:
        factors = list(_ADAPTER_SOFT)[-count:] if count <= len(_ADAPTER_SOFT) else [1.0] * count
        return [weight * factor for factor in factors]
    return [weight * _CONTROLNET_SOFT_BASE ** float(count - 1 - i) for i in range(count)]


class _ControlUnitExtension(Extension):
    def __init__(self, network: torch.nn.Module, hint: torch.Tensor, *, weight: float, mode: str,
                 begin: float, end: float, images: Sequence[int] | None = None):
        super().__init__(begin, end, images)
        self.network = network
        self.hint = hint
        self.weight = weight
        self.soft = mode != "Balanced"
        # A globally pooled ControlNet (v1.1 shuffle) conditions the prompt half only, whatever the mode:
        # its averaged residuals in the negative half would cancel out under CFG (as the extension does).
        pooled = getattr(network.config, "global_pool_conditions", False)
        self.conditional_only = mode == "ControlNet is more important" or pooled

    def unit_rows(self, context: DenoiseContext) -> list[int]:
        """The batch rows the unit conditions: its pictures in both CFG halves, or in the conditional half
        (the last) alone when the control matters more than the prompt."""
        rows = context.rows(self.images)
        if self.conditional_only and context.halves == 2:
            rows = rows[len(rows) // 2:]
        return rows

    def scales(self, count: int, adapter: bool) -> list[float]:
        return soft_scales(self.weight, count, adapter) if self.soft else [self.weight] * count


class ControlNetUnit(_ControlUnitExtension):
    """A diffusers ControlNetModel run on the U-Net's own input, timestep and prompt states each evaluation."""

    def before_unet(self, context: DenoiseContext) -> None:
        rows = self.unit_rows(context)
        index = torch.tensor(rows, device=context.model_input.device)
        # An inpainting U-Net takes mask + masked-picture channels too; its ControlNet reads the latents alone.
        sample = context.model_input[index, : self.network.config.in_channels]
        kwargs = context.unet_kwargs
        added = kwargs.get("added_cond_kwargs")
        if added is not None:
            added = {key: value[index] for key, value in added.items()}
        down, mid = self.network(
            sample, context.timestep, encoder_hidden_states=kwargs["encoder_hidden_states"][index],
            controlnet_cond=self.hint.expand(len(rows), -1, -1, -1), conditioning_scale=1.0,
            added_cond_kwargs=added, return_dict=False,
        )
        scales = self.scales(len(down) + 1, adapter=False)
        down = [residual * scale for residual, scale in zip(down, scales)]
        context.add_residuals(down, mid * scales[-1], rows)


class AdapterUnit(_ControlUnitExtension):
    """A diffusers T2IAdapter: its feature maps depend on the picture alone, so they are made once per pass
    and added inside the U-Net's down blocks (diffusers' down_intrablock_additional_residuals)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._features: list[torch.Tensor] | None = None

    def before_unet(self, context: DenoiseContext) -> None:
        if self._features is None:
            self._features = list(self.network(self.hint))
        rows = self.unit_rows(context)
        scales = self.scales(len(self._features), adapter=True)
        features = [(feature * scale).expand(len(rows), -1, -1, -1) for feature, scale in zip(self._features, scales)]
        context.add_adapter_features(features, rows)
