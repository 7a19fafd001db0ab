"""From a recipe's control units to denoiser extensions: the models from ControlNet/, each unit's picture
through its preprocessor and fitted to the pass, the family checked against the checkpoint's."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from brushwork.control.extension import AdapterUnit, ControlNetUnit, hint_tensor
from brushwork.control.preprocessors import fit_to_size, module_name, pixel_perfect_resolution, preprocess
from brushwork.engine.extensions import Extension
from brushwork.errors import BrushworkError, RecipeError
from brushwork.images import load_image
from brushwork.models.components import Components
from brushwork.models.control import ControlModel, check_family, load_control_model
from brushwork.models.store import ANNOTATORS, ModelStore
from brushwork.recipe import ControlUnit, Recipe


class ControlUnits:
    """The Engine's extension provider for ControlNet and T2I-Adapter units. Keeps the last `max_loaded`
    control models read (LRU; a file changed on disk is read afresh), shared by every job: the networks are
    only ever run, never changed."""

    def __init__(self, store: ModelStore, max_loaded: int = 4):
        self.store = store
        self.max_loaded = max_loaded
        self._models: OrderedDict[tuple, ControlModel] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def annotators_dir(self) -> Path | None:
        folders = self.store.folders("controlnet")
        return folders[0] / ANNOTATORS if folders else None

    def model(self, name: str) -> ControlModel:
        path = self.store.resolve("controlnet", name)
        stat = path.stat()
        key = (path, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        model = load_control_model(path, device=self.store.device, dtype=self.store.dtype,
                                   allow_pickle=self.store.allow_pickle)
        with self._lock:
            self._models[key] = model
            while len(self._models) > self.max_loaded:
                self._models.popitem(last=False)
        return model

    def detect(self, unit: ControlUnit, image: Image.Image, width: int, height: int) -> Image.Image:
        """The unit's control map for a width x height picture: its preprocessor's output, fitted as the
        unit's resize mode says (what /controlnet/detect and the UI's preview show)."""
        resolution = unit.processor_res
        if unit.pixel_perfect:
            resolution = pixel_perfect_resolution(image.size, (width, height), unit.resize_mode)
        detected = preprocess(unit.module, image, resolution, unit.threshold_a, unit.threshold_b,
                              annotators_dir=self.annotators_dir)
        return fit_to_size(detected, width, height, unit.resize_mode)

    def check(self, recipe: Recipe) -> None:
        """Refuse, before any model loads, units that cannot run: no picture, an unknown preprocessor or model."""
        if recipe.control_units and recipe.mask is not None and recipe.inpaint_full_res:
            # The extension crops each unit's picture around the mask as the pass crops the init picture; here
            # the unit would see the whole picture squeezed into the crop.
            raise RecipeError("control_units: units with 'only masked' inpainting (inpaint_full_res) are not "
                              "supported; inpaint the whole picture (inpaint_full_res false)")
        for index, unit in enumerate(recipe.control_units):
            if unit.image is None and recipe.init_image is None:
                raise RecipeError(f"control_units.{index}.image: give the unit a picture (only img2img falls back "
                                  "to the init image)")
            try:
                module_name(unit.module)
            except BrushworkError as error:
                raise RecipeError(f"control_units.{index}.module: {error}") from None
            self.store.resolve("controlnet", unit.model)

    def __call__(self, recipe: Recipe, components: Components, width: int, height: int) -> list[Extension]:
        extensions: list[Extension] = []
        for unit in recipe.control_units:
            model = self.model(unit.model)
            check_family(model, components.family, recipe.model or "the checkpoint")
            picture = load_image(unit.image if unit.image is not None else recipe.init_image, what="control image")
            control_map = self.detect(unit, picture, width, height)
            network = model.network
            channels = network.config.conditioning_channels if model.kind == "controlnet" else network.config.in_channels
            hint = hint_tensor(control_map, channels, self.store.device, self.store.dtype)
            kind = ControlNetUnit if model.kind == "controlnet" else AdapterUnit
            extensions.append(kind(network, hint, weight=unit.weight, mode=unit.control_mode,
                                   begin=unit.guidance_start, end=unit.guidance_end))
        return extensions
