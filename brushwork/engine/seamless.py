"""Seamless textures (A1111's "Tiling"): every convolution of the U-Net and the VAE pads circularly.

With circular padding the picture's left edge is the right edge's neighbour (and top of bottom), so the
networks paint a torus and the output tiles without a seam. Attention is already position-free; only
the convolutions' zero padding tells an edge from the middle. The switch is a patch on the job's
shared models with an exact restore: only `padding_mode`, a string, is changed and put back.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def circular_padding(*modules: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, each padded Conv2d of `modules` pads circularly; afterwards exactly as before."""
    if not enabled:
        yield
        return
    convolutions = [layer for module in modules for layer in module.modules()
                    if isinstance(layer, nn.Conv2d) and any(layer.padding)]
    originals = [layer.padding_mode for layer in convolutions]
    try:
        for layer in convolutions:
            layer.padding_mode = "circular"
        yield
    finally:
        for layer, mode in zip(convolutions, originals):
            layer.padding_mode = mode
