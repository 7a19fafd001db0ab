"""An exponential moving average of a module's weights; the saved model uses the average."""

from __future__ import annotations

import copy

import torch


class EMA:
    """Keeps `shadow`, a frozen copy of `module` whose weights trail the trained ones.

    The decay warms up as min(decay, (1 + step) / (10 + step)), so early steps (when the weights
    still move fast) are not averaged with the random initialisation for long.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        """Blend in `module`'s weights after optimizer step `step` (0-based)."""
        decay = self.decay_at(step)
        ema = [p for p in self.shadow.parameters()]
        live = [p.detach() for p in module.parameters()]
        torch._foreach_lerp_(ema, live, 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(state)
