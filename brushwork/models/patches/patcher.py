"""The patch seam: weight changes on the shared U-Net and text encoders for the length of one job.

A checkpoint's modules are loaded once and shared by every job, so a job that wants other weights (a LoRA at
some strength) changes them in place and puts them back when it ends, ended well or not. Only the tensors a
patch touches are copied, once, before their first change; putting back copies those originals into place,
so the model is bit-identical afterwards whatever the patches computed. This is ComfyUI's ModelPatcher idea
(backup of patched keys only), without its lazy per-layer machinery: a job's patches are applied up front.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn

# A parameter's new value from its current one (float32, the parameter's shape). It may change the tensor it is
# given in place and return it: for a float32 parameter that tensor is the parameter itself (saves a copy).
WeightChange = Callable[[torch.Tensor], torch.Tensor]


class WeightPatch(Protocol):
    """Something that changes weights: yields (module name, parameter name, change), where the module name is
    one of the patcher's (`unet`, `text_encoder`, `text_encoder_2`)."""

    def changes(self) -> Iterator[tuple[str, str, WeightChange]]: ...


class ModelPatcher:
    """Applies weight patches to one checkpoint's modules for a job, then restores them exactly.

    One job at a time per checkpoint: `applied` holds a lock for as long as the job runs, so a second job on
    the same modules (another thread) waits instead of seeing the first one's weights. Not reentrant: a job
    opened inside another on the same thread would take the first one's patched weights for the originals, so
    that is refused. The originals are kept in CPU memory, as A1111 and ComfyUI keep theirs (a GPU holds the
    model, not a second copy of what a LoRA touches).
    """

    def __init__(self, modules: Mapping[str, nn.Module]):
        self.modules = dict(modules)
        self._lock = threading.Lock()
        self._owner: int | None = None  # the thread inside `applied`

    def parameter(self, module: str, name: str) -> torch.Tensor:
        try:
            return self.modules[module].get_parameter(name)
        except (KeyError, AttributeError):
            raise KeyError(f"{module} has no parameter {name!r}") from None

    @contextmanager
    def applied(self, patches: Sequence[WeightPatch]) -> Iterator[None]:
        """The modules with `patches` applied in order, restored when the block ends (also by an exception)."""
        if self._owner == threading.get_ident():
            raise RuntimeError("this model already has a job's patches applied on this thread: finish (or close) "
                               "that job before starting another on the same model")
        with self._lock:
            self._owner = threading.get_ident()
            originals: dict[tuple[str, str], torch.Tensor] = {}
            try:
                with torch.no_grad():
                    for patch in patches:
                        for module, name, change in patch.changes():
                            parameter = self.parameter(module, name)
                            if (module, name) not in originals:
                                originals[module, name] = parameter.detach().to("cpu", copy=True)
                            changed = change(parameter.detach().float())
                            if changed.data_ptr() != parameter.data_ptr():
                                parameter.copy_(changed)
                yield
            finally:
                with torch.no_grad():
                    for (module, name), original in originals.items():
                        self.parameter(module, name).copy_(original)
                self._owner = None
