"""The denoiser's extension seam: what ControlNet, T2I-Adapter, IP-Adapter and guidance tweaks plug into.

Around every U-Net evaluation of a pass, `GuidedDenoiser` builds a `DenoiseContext` and hands it to each
active `Extension`, in order:

    before_unet(context)       add residuals, extra tokens or attention inputs to `context.unet_kwargs`
    (the U-Net runs once on the whole batch, both CFG halves together)
    after_guidance(context)    change `context.output`, the guided prediction (e.g. CFG rescale)

An extension belongs to some pictures of the batch (`images`; None for all of them), so jobs with different
extensions still share one U-Net batch and each one changes only its own pictures. It is active between its
`begin` and `end` fractions of the pass's evaluations, as A1111's ControlNet guidance start/end: evaluation i
of n is active when begin <= i / n <= end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from brushwork.models.components import Components
from brushwork.recipe import Recipe


@dataclass
class DenoiseContext:
    """One U-Net evaluation: what goes in, and (after guidance) what came out."""

    step: int  # 0-based index of this evaluation among the pass's `total`
    total: int
    timestep: torch.Tensor
    images: int  # pictures in the batch (B)
    halves: int  # 2 with classifier-free guidance (negative half first), else 1
    model_input: torch.Tensor  # [halves * B, C, h, w]
    unet_kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the U-Net call
    raw: torch.Tensor | None = None  # the U-Net's output, [halves * B, ...] (set after the call)
    output: torch.Tensor | None = None  # the guided prediction, [B, ...] (set after guidance)

    @property
    def fraction(self) -> float:
        return self.step / self.total

    def rows(self, images: Sequence[int] | None) -> list[int]:
        """The U-Net batch rows of these pictures, in every half (all rows for None)."""
        pictures = range(self.images) if images is None else images
        return [half * self.images + image for half in range(self.halves) for image in pictures]

    def _widen(self, residual: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """A tensor made for `rows` as one for the whole batch: zeros in the other rows."""
        batch = self.model_input.shape[0]
        if len(rows) == batch:
            return residual
        index = torch.tensor(rows, device=self.model_input.device)
        return residual.new_zeros((batch, *residual.shape[1:])).index_copy(0, index, residual)

    def _sum_into(self, key: str, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        previous = self.unet_kwargs.get(key)
        if previous is not None:
            tensors = [old + new for old, new in zip(previous, tensors, strict=True)]
        self.unet_kwargs[key] = tensors
        return tensors

    def add_residuals(self, down: Sequence[torch.Tensor], mid: torch.Tensor | None, rows: list[int]) -> None:
        """Add ControlNet-style residuals (to the skip connections) computed for `rows` only; the other rows get
        none. Residuals of several extensions add up, as diffusers' MultiControlNet sums its nets'. Without a
        `mid` residual the mid block gets zeros: diffusers would read down residuals alone as an adapter's."""
        widened = self._sum_into("down_block_additional_residuals", [self._widen(r, rows) for r in down])
        previous_mid = self.unet_kwargs.get("mid_block_additional_residual")
        if mid is not None:
            mid = self._widen(mid, rows)
            self.unet_kwargs["mid_block_additional_residual"] = mid if previous_mid is None else previous_mid + mid
        elif previous_mid is None:  # the mid block's output has the deepest down residual's shape
            self.unet_kwargs["mid_block_additional_residual"] = torch.zeros_like(widened[-1])

    def add_adapter_features(self, features: Sequence[torch.Tensor], rows: list[int]) -> None:
        """Add T2I-Adapter feature maps (added inside the down blocks: diffusers'
        down_intrablock_additional_residuals) for `rows` only; several adapters' features add up."""
        self._sum_into("down_intrablock_additional_residuals", [self._widen(f, rows) for f in features])


class Extension:
    """Base of the denoiser's extensions: override the hooks you need. `order` sorts extensions (lower
    first; equal orders keep the order they were given in)."""

    order: int = 0

    def __init__(self, begin: float = 0.0, end: float = 1.0, images: Sequence[int] | None = None):
        if not 0.0 <= begin <= end <= 1.0:
            raise ValueError(f"an extension's begin and end must satisfy 0 <= begin <= end <= 1, got {begin}, {end}")
        self.begin = begin
        self.end = end
        self.images = None if images is None else tuple(images)

    def active(self, context: DenoiseContext) -> bool:
        return self.begin <= context.fraction <= self.end

    def before_unet(self, context: DenoiseContext) -> None:
        """Add to `context.unet_kwargs` for this extension's rows."""

    def after_guidance(self, context: DenoiseContext) -> None:
        """Change `context.output` for this extension's pictures."""


def ordered(extensions: Sequence[Extension]) -> list[Extension]:
    return sorted(extensions, key=lambda extension: extension.order)


# What the engine asks for each pass: the extensions a recipe's pictures need, at the pass's size.
ExtensionProvider = Callable[[Recipe, Components, int, int], list[Extension]]
