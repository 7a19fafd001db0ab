"""One optimizer step for every fine-tuner: mixed precision and several processes through accelerate, gradient
accumulation, gradient checkpointing and an optional EMA of the trained weights.

A step is `accumulation x processes` micro-batches. Micro-batch k of step i is number
(i * accumulation + a) * processes + rank, and a trainer draws that micro-batch's pictures, noise and
timesteps from that number alone, so one process with accumulation 4 and four processes with accumulation 1
train on the same pictures, and a resumed run replays exactly what the uninterrupted one did. Under
`accelerate launch` every process computes its micro-batches' gradients, they are averaged across processes
before the optimizer moves, and only the main process writes files.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from brushwork.errors import BrushworkError
from brushwork.train.settings import PRECISIONS, StepSettings

def processes():
    """accelerate's process state: which of the launched processes this is (one, when not launched). CPU-only
    machines say so, so that processes started by torch's launcher talk over gloo."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


class ParameterEMA:
    """A trailing average of some parameters (warm-up as in train/ema.py: min(decay, (1 + t) / (10 + t)))."""

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = [p.detach().clone().float() for p in parameters]

    @torch.no_grad()
    def update(self, parameters: list[torch.nn.Parameter], step: int) -> None:
        weight = 1.0 - min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in parameters], weight)

    @torch.no_grad()
    def copy_to(self, parameters: list[torch.nn.Parameter]) -> None:
        for parameter, average in zip(parameters, self.shadow):
            parameter.copy_(average.to(parameter.dtype))


class Optimization:
    """AdamW over `parameters` on `device`; `modules` are the trained modules (for gradient checkpointing).
    `parameters` may hold parameter groups too, as dicts {"params": [...], "lr_scale": s, "weight_decay": d}: their
    learning rate is s times the schedule's (pivotal tuning's word vectors learn faster than the LoRA)."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter | dict], *, lr: float, weight_decay: float,
                 settings: StepSettings, device: torch.device | str, modules: Iterable[torch.nn.Module] = ()):
        if settings.mixed_precision not in PRECISIONS:
            raise BrushworkError(f"--mixed-precision: choose one of {', '.join(PRECISIONS)}")
        if settings.accumulation < 1:
            raise BrushworkError("--gradient-accumulation must be at least 1")
        if not 0.0 <= settings.ema_decay < 1.0:
            raise BrushworkError("--ema-decay must be at least 0 and below 1 (0: no EMA)")
        self.device = torch.device(device)
        if settings.mixed_precision == "fp16" and self.device.type == "cpu":
            raise BrushworkError("--mixed-precision fp16 needs a GPU; on the CPU use bf16")
        self.settings = settings
        entries = list(parameters)
        groups = [{"params": [entry for entry in entries if not isinstance(entry, dict)]},
                  *(entry for entry in entries if isinstance(entry, dict))]
        self.parameters = [parameter for group in groups for parameter in group["params"]]
        # accelerate's process state only (rank, count, collectives): its Accelerator fixes the precision once
        # per process, and a server trains one job after another, each with its own.
        self.processes = processes()
        self.optimizer = torch.optim.AdamW([{"lr_scale": 1.0, **group} for group in groups], lr=lr,
                                           weight_decay=weight_decay)
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(settings.mixed_precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if settings.mixed_precision == "fp16" else None
        self.ema = ParameterEMA(self.parameters, settings.ema_decay) if settings.ema_decay else None
        if settings.gradient_checkpointing:
            for module in modules:
                _enable_checkpointing(module)

    @property
    def is_main(self) -> bool:
        return self.processes.is_main_process

    def micro_batches(self, step: int) -> list[int]:
        """The micro-batch numbers this process trains in optimizer step `step`."""
        processes, rank = self.processes.num_processes, self.processes.process_index
        per_step = self.settings.accumulation
        return [(step * per_step + a) * processes + rank for a in range(per_step)]

    def step(self, step: int, lr: float, loss_of: Callable[[int], torch.Tensor]) -> float:
        """Optimizer step `step` at learning rate `lr`; `loss_of(micro)` is one micro-batch's loss. Returns the
        step's mean loss over every micro-batch of every process."""
        from accelerate.utils import reduce

        total = torch.zeros((), device=self.device)
        micros = self.micro_batches(step)
        with torch.set_grad_enabled(True):
            for micro in micros:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                    loss = loss_of(micro)
                share = loss.float() / len(micros)
                (share if self.scaler is None else self.scaler.scale(share)).backward()
                total += loss.detach().float()
            if self.processes.num_processes > 1:
                for parameter in self.parameters:
                    if parameter.grad is not None:
                        parameter.grad = reduce(parameter.grad, reduction="mean")
                total = reduce(total, reduction="mean")
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            if self.scaler is None:
                self.optimizer.step()
            else:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.parameters, step)
        return float(total) / len(micros)

    def stop_together(self, should_stop: Callable[[], bool] | None) -> Callable[[], bool] | None:
        """`should_stop` as the launched processes answer it together: True in every process when it is True in
        any, so all leave the step loop after the same step. A stop seen by one process alone (its Ctrl-C, a
        signal) would leave the others waiting forever in the next step's gradient all-reduce. One process asks
        `should_stop` itself: no collective, nothing changed."""
        if should_stop is None or self.processes.num_processes == 1:
            return should_stop
        from accelerate.utils import reduce

        def any_process() -> bool:
            wanted = torch.tensor(float(should_stop()), device=self.device)
            return bool(reduce(wanted, reduction="max"))

        return any_process

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = [average.clone() for average in self.ema.shadow]
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.shadow = [average.to(p.device, torch.float32) for average, p in zip(state["ema"], self.parameters)]

    def finish(self) -> None:
        """Before the weights are saved: the EMA's average becomes the weights."""
        if self.ema is not None:
            self.ema.copy_to(self.parameters)
        self.processes.wait_for_everyone()


def _enable_checkpointing(module: torch.nn.Module) -> None:
    if hasattr(module, "enable_gradient_checkpointing"):  # diffusers models
        module.enable_gradient_checkpointing()
    elif hasattr(module, "gradient_checkpointing_enable"):  # transformers models
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise BrushworkError(f"--gradient-checkpointing: {type(module).__name__} does not support it")
