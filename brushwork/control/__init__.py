"""ControlNet preprocessors: pictures to control maps (edges, depth, pose...), as sd-webui-controlnet makes them."""

from brushwork.control.preprocessors import (
    PREPROCESSORS,
    RESIZE_MODES,
    Preprocessor,
    Slider,
    fit_to_size,
    module_name,
    pixel_perfect_resolution,
    preprocess,
    resize_mode_name,
)

__all__ = [
    "PREPROCESSORS",
    "RESIZE_MODES",
    "Preprocessor",
    "Slider",
    "fit_to_size",
    "module_name",
    "pixel_perfect_resolution",
    "preprocess",
    "resize_mode_name",
]
