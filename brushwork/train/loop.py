"""The step loop both stages share: learning-rate schedule, progress bar, checkpoints, stopping."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from tqdm import tqdm


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at the user's request after saving its state; `--resume` continues it."""

    def __init__(self, stage: str, step: int):
        super().__init__(f"{stage} stopped after step {step}")
        self.stage = stage
        self.step = step


def learning_rate(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to peak * min_ratio at the last step."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass
class LoopHooks:
    """What a stage does besides its steps. Every callable gets the number of steps done so far."""

    checkpoint: Callable[[int], None]
    checkpoint_every: int
    sample: Callable[[int], None] | None = None
    sample_every: int = 0
    should_stop: Callable[[], bool] | None = None  # asked after every step; True saves and stops
    on_step: Callable[[str, int, float], None] | None = None  # (stage, steps done, loss), e.g. for tests
    progress: bool = True


@dataclass
class LoopResult:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0  # this session's time in the loop
    elapsed_total: float = 0.0  # the stage's time over every session (resumes included)

    @property
    def steps_per_second(self) -> float:
        return len(self.losses) / self.seconds if self.seconds > 0 else 0.0


def run_steps(
    stage: str, start: int, total: int, step: Callable[[int], float], hooks: LoopHooks
) -> LoopResult:
    """Run steps `start`..`total - 1` of `stage`; `step(i)` trains on batch i and returns its loss.

    Saves a checkpoint every `checkpoint_every` steps and at the end; a stop request saves one and
    raises TrainingInterrupted.
    """
    result = LoopResult()
    bar = tqdm(total=total, initial=start, desc=stage, unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=not hooks.progress, smoothing=0.05)
    smoothed: float | None = None
    started = time.perf_counter()
    try:
        for index in range(start, total):
            loss = step(index)
            done = index + 1
            result.losses.append(loss)
            smoothed = loss if smoothed is None else 0.98 * smoothed + 0.02 * loss
            bar.update(1)
            bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)
            if hooks.on_step is not None:
                hooks.on_step(stage, done, loss)
            saved = done == total or (hooks.checkpoint_every > 0 and done % hooks.checkpoint_every == 0)
            if saved:
                hooks.checkpoint(done)
            if hooks.sample is not None and hooks.sample_every and (done % hooks.sample_every == 0 or done == total):
                hooks.sample(done)
            if done < total and hooks.should_stop is not None and hooks.should_stop():
                if not saved:
                    hooks.checkpoint(done)
                raise TrainingInterrupted(stage, done)
    finally:
        bar.close()
    result.seconds = time.perf_counter() - started
    return result
