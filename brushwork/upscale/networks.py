"""Super-resolution networks from the `ESRGAN/` models folder, recognised by spandrel.

spandrel knows the architectures from their weights alone (ESRGAN old and new layouts,
Real-ESRGAN and its compact variant, SwinIR, HAT, DAT, OmniSR, ...), so a file needs no config.
The weights come from our own `read_state_dict`: `.safetensors` always, pickles (`.pth`, `.pt`,
`.ckpt`) only with `allow_pickle` and then through `torch.load(weights_only=True)`, never through
spandrel's own file loader.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from brushwork.errors import ModelLoadError
from brushwork.models.single_file import PICKLE_SUFFIXES, StateDict, read_state_dict

if TYPE_CHECKING:  # spandrel is imported on first load: importing its ~50 architectures takes a while
    from spandrel import ImageModelDescriptor

log = logging.getLogger(__name__)

# Keys under which trainers nest their weights (BasicSR: Real-ESRGAN, SwinIR, HAT, ...), EMA weights
# first as Real-ESRGAN's own inference code prefers them.
_WRAPPER_KEYS = ("params_ema", "params-ema", "params", "model_state_dict", "state_dict", "model", "net")


@dataclass(frozen=True)
class Network:
    """A loaded upscaler network and what spandrel says about it."""

    path: Path
    descriptor: ImageModelDescriptor
    architecture: str
    scale: int

    @property
    def device(self) -> torch.device:
        return self.descriptor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.descriptor.dtype

    @property
    def needs_whole_picture(self) -> bool:
        """True for networks that tile internally (spandrel's `ModelTiling.INTERNAL`). Those where spandrel
        merely discourages tiling (SwinIR, HAT, ...) are tiled anyway, as A1111 does: whole, a large
        picture would not fit in memory."""
        from spandrel import ModelTiling

        return self.descriptor.tiling == ModelTiling.INTERNAL

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """[1, 3, h, w] in [0, 1] on the network's device and dtype -> [1, 3, h*scale, w*scale] in [0, 1].
        spandrel pads inputs to the sizes the architecture needs (SwinIR's window multiple) and crops back."""
        return self.descriptor(pixels)


def read_weights(path: Path, *, allow_pickle: bool) -> StateDict:
    """The tensors of an upscaler file, unwrapped from a trainer's `{"params_ema": {...}}` if need be."""
    state = read_state_dict(path, allow_pickle=allow_pickle)  # refuses pickles without the opt-in
    if state or path.suffix.lower() not in PICKLE_SUFFIXES:
        return state
    # read_state_dict keeps top-level tensors only, and BasicSR files (the official Real-ESRGAN and
    # SwinIR downloads) have none: their weights sit one dict down. Same safe unpickler, read again.
    data = torch.load(path, map_location="cpu", weights_only=True)
    for key in _WRAPPER_KEYS:
        nested = data.get(key) if isinstance(data, dict) else None
        if isinstance(nested, dict):
            return {k: v for k, v in nested.items() if isinstance(v, torch.Tensor)}
    return {}


def load_network(
    path: Path,
    *,
    allow_pickle: bool,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Network:
    """Load the upscaler in `path` onto `device`, in `dtype` where the architecture supports it
    (else float32). Raises ModelLoadError for anything that is not an image-to-image upscaler."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    state = read_weights(path, allow_pickle=allow_pickle)
    try:
        descriptor = ModelLoader().load_from_state_dict(state)
    except UnsupportedModelError:
        raise ModelLoadError(
            f"{path.name} is not an upscaler brushwork recognises: spandrel knows no architecture with its "
            "weights (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, ... are supported); is the file complete?"
        ) from None
    except Exception as error:  # a known architecture whose tensors do not fit it
        raise ModelLoadError(f"{path.name} looks like an upscaler but its weights do not fit: {error}") from error
    name = descriptor.architecture.name
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ModelLoadError(f"{path.name} is a {name} {descriptor.purpose.lower()} model, not an upscaler")
    if descriptor.purpose not in ("SR", "Restoration"):
        raise ModelLoadError(f"{path.name} is a {name} {descriptor.purpose} model (faces), not a general upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ModelLoadError(
            f"{path.name} takes {descriptor.input_channels} and returns {descriptor.output_channels} channels; "
            "brushwork upscales RGB pictures (3 channels)"
        )
    supported = {torch.float32: True, torch.float16: descriptor.supports_half, torch.bfloat16: descriptor.supports_bfloat16}
    descriptor.to(torch.device(device)).to(dtype if supported.get(dtype) else torch.float32).eval()
    log.info("loaded %s: %s %dx", path.name, name, descriptor.scale)
    return Network(path=path, descriptor=descriptor, architecture=name, scale=int(descriptor.scale))


class NetworkCache:
    """The last `max_loaded` networks loaded, by file (LRU). Owned by whoever upscales repeatedly:
    the CLI for one run, a server for its lifetime. A file changed on disk is loaded afresh; two
    threads asking for the same network at once load it once. `load` reads one file (`load_network`
    for upscalers; faces.py passes its own)."""

    def __init__(self, max_loaded: int = 2, *, load: Callable[..., Any] | None = None):
        if max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self.max_loaded = max_loaded
        self._load = load or load_network
        self._networks: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, *, allow_pickle: bool, device: torch.device | str, dtype: torch.dtype) -> Any:
        """The network in `path`, loaded now or earlier."""
        stat = path.stat()
        # allow_pickle is part of the key: a network loaded under the opt-in is not served without it.
        key = (path, stat.st_mtime_ns, stat.st_size, allow_pickle, str(device), dtype)
        with self._lock:
            if key in self._networks:
                self._networks.move_to_end(key)
                return self._networks[key]
            while len(self._networks) >= self.max_loaded:  # free before loading: never one network too many
                self._networks.popitem(last=False)
            network = self._load(path, allow_pickle=allow_pickle, device=device, dtype=dtype)
            self._networks[key] = network
            return network

    def clear(self) -> None:
        with self._lock:
            self._networks.clear()

    def __len__(self) -> int:
        return len(self._networks)
