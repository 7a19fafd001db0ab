"""ControlNet preprocessors ("modules"), named and behaving as in the sd-webui-controlnet extension.

A preprocessor turns a picture into the control map a ControlNet was trained on: edges, depth, pose...
`PREPROCESSORS` is keyed by the extension's UI names, which its infotext ("Module: depth_midas") and
`/controlnet/module_list?alias_names=true` use; `module_name` also takes its internal names and older
aliases ("depth", "hed", "fake_scribble"). `threshold_a` / `threshold_b` are its two sliders, with its
labels, ranges and defaults.

As in the extension, a module that takes a resolution works on the picture scaled so that its short side is
`resolution` (cubic up, area down), padded with its edge pixels to multiples of 64 while it runs (the
networks need them) and cropped back: the map is round(h*k) x round(w*k). `fit_to_size` then brings it to
the generation size by one of the three resize modes, and `pixel_perfect_resolution` picks the resolution
at which that needs no rescaling.

The classic modules run here on numpy and OpenCV; the learned ones go through controlnet_aux (annotators.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from brushwork.control import annotators
from brushwork.errors import BrushworkError

RESIZE_MODES: tuple[str, ...] = ("Just Resize", "Crop and Resize", "Resize and Fill")  # enum ints 0, 1, 2
# The extension's older names, still sent by API clients written for them.
_RESIZE_MODE_ALIASES = {
    "Inner Fit (Scale to Fit)": "Crop and Resize",
    "Scale to Fit (Inner Fit)": "Crop and Resize",
    "Outer Fit (Shrink to Fit)": "Resize and Fill",
    "Envelope (Outer Fit)": "Resize and Fill",
}
_LATENT_UPSCALE = 3  # A1111's img2img "Just resize (latent upscale)", which the extension treats as Just Resize


def resize_mode_name(value: str | int) -> str:
    """The resize mode named by `value`: a name, its enum int (0, 1, 2; 3 as the extension reads it) or an
    old alias. ValueError listing the choices otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(RESIZE_MODES):
            return RESIZE_MODES[value]
        if value == _LATENT_UPSCALE:
            return RESIZE_MODES[0]
    elif isinstance(value, str):
        if value in RESIZE_MODES:
            return value
        if value in _RESIZE_MODE_ALIASES:
            return _RESIZE_MODE_ALIASES[value]
    raise ValueError(f"unknown resize mode {value!r}: choose one of {', '.join(RESIZE_MODES)} (or 0, 1, 2)")


def pixel_perfect_resolution(image_size: tuple[int, int], target: tuple[int, int], mode: str) -> int:
    """The preprocessor resolution whose map needs no rescaling to cover `target` in `mode`; both sizes are
    (width, height). The extension's formula: the scale that fits the picture to the target (the smaller
    per-side scale for Resize and Fill, the larger otherwise) times its short side, rounded half to even."""
    (raw_w, raw_h), (target_w, target_h) = image_size, target
    if min(raw_w, raw_h, target_w, target_h) < 1:
        raise ValueError(f"sizes must be positive, got image {image_size} and target {target}")
    scales = (target_h / raw_h, target_w / raw_w)
    scale = min(scales) if resize_mode_name(mode) == "Resize and Fill" else max(scales)
    return round(scale * min(raw_w, raw_h))


def fit_to_size(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """`image` (a control map, as RGB) brought to width x height as the extension does it:
    Just Resize stretches it; Crop and Resize scales it to cover the size and crops the middle; Resize and Fill
    scales it to fit inside and centres it on the median colour of its border (white around a white-background
    lineart, black around an edge map)."""
    mode = resize_mode_name(mode)
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {width}x{height}")
    pixels = _rgb(image)
    if mode == "Just Resize":
        return Image.fromarray(_resize_map(pixels, width, height))
    old_h, old_w = pixels.shape[:2]
    if mode == "Crop and Resize":
        scale = max(height / old_h, width / old_w)
        scaled = _resize_map(pixels, round(old_w * scale), round(old_h * scale))
        top, left = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
        return Image.fromarray(scaled[top:top + height, left:left + width])
    scale = min(height / old_h, width / old_w)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    canvas = np.tile(np.median(border, axis=0).astype(np.uint8), (height, width, 1))
    scaled = _resize_map(pixels, round(old_w * scale), round(old_h * scale))
    top, left = (height - scaled.shape[0]) // 2, (width - scaled.shape[1]) // 2
    canvas[top:top + scaled.shape[0], left:left + scaled.shape[1]] = scaled
    return Image.fromarray(canvas)


def _resize_map(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """The extension's control-map resize: nearest for maps of a few flat colours (segmentation, so no new
    colours appear), area when shrinking, cubic when enlarging; a black-and-white map stays black and white
    (Otsu re-threshold). The extension also thins one-pixel edges after this; brushwork does not."""
    if pixels.shape[:2] == (height, width):
        return pixels
    packed = (pixels[..., 0].astype(np.int32) << 16) | (pixels[..., 1].astype(np.int32) << 8) | pixels[..., 2]
    colours = np.unique(packed).size
    if 2 < colours < 200:
        interpolation = cv2.INTER_NEAREST
    elif width * height < pixels.shape[0] * pixels.shape[1]:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    resized = cv2.resize(pixels, (width, height), interpolation=interpolation)
    if colours == 2 and pixels.min() < 16 and pixels.max() > 240:
        grey = resized.mean(axis=2).astype(np.uint8)
        _, binary = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        resized = np.stack([binary] * 3, axis=2)
    return resized


def _rgb(image: Image.Image) -> np.ndarray:
    """H x W x 3 uint8; transparency is composited on white, as the extension's HWC3 does."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2) if grey.ndim == 2 else grey


def _padded(pixels: np.ndarray, resolution: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The picture with its short side at `resolution`, edge-padded to multiples of 64, and the slice that
    crops a map of it back (the extension's resize_image_with_pad)."""
    h, w = pixels.shape[:2]
    scale = resolution / min(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    resized = cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    padded = np.pad(resized, [(0, -new_h % 64), (0, -new_w % 64), (0, 0)], mode="edge")
    return padded, (slice(0, new_h), slice(0, new_w))


def _scaled(pixels: np.ndarray, resolution: int) -> np.ndarray:
    padded, crop = _padded(pixels, resolution)
    return padded[crop]


@dataclass(frozen=True)
class Slider:
    """A preprocessor setting as the extension's UI shows it (`/controlnet/module_list` lists these).
    A slider with step 1 takes whole numbers: its value is passed on as int(value), as the extension does."""

    name: str
    minimum: float
    maximum: float
    default: float
    step: float = 0.01


@dataclass(frozen=True)
class RunContext:
    """What a module needs besides the picture and its settings."""

    module: str  # its name, for error messages
    seed: int  # shuffle's random warp (the extension seeds numpy with the job's seed)
    annotators_dir: Path | None  # learned modules' weights
    device: str  # learned modules' networks


# A module: (RGB pixels, resolution, threshold a, threshold b, context) -> the map, H x W x 3 (or H x W) uint8.
ModuleFunction = Callable[[np.ndarray, int, "float | None", "float | None", RunContext], np.ndarray]

RESOLUTION = Slider("Resolution", 64, 2048, 512, step=8)  # the extension's processor resolution slider
# What run() takes: pixel perfect goes past the slider, below it for the embedded model's 64-pixel pictures
# and above it for large ones, as in the extension (which bound-checks the slider before pixel perfect).
RESOLUTION_RANGE = (8, 4096)


@dataclass(frozen=True)
class Preprocessor:
    """One module: its name, whether it needs annotator weights, its sliders, and what it does."""

    name: str
    learned: bool
    threshold_a: Slider | None
    threshold_b: Slider | None
    uses_resolution: bool  # False: the map keeps the picture's size (invert, tile_resample...), no slider shown
    function: ModuleFunction = field(repr=False, compare=False)

    def run(self, image: Image.Image, resolution: int, threshold_a: float | None, threshold_b: float | None,
            annotators_dir: Path | None, *, seed: int = 0, device: str = "cpu") -> Image.Image:
        """The RGB control map of `image`. A None threshold is the slider's default; a threshold this module
        has no slider for is ignored (A1111 clients send both for every unit); one outside its slider's range,
        or a resolution outside RESOLUTION_RANGE, is a BrushworkError."""
        if image.width < 1 or image.height < 1:
            raise BrushworkError(f"ControlNet preprocessor {self.name!r} got an empty picture")
        low, high = RESOLUTION_RANGE
        if self.uses_resolution and not low <= resolution <= high:
            raise BrushworkError(f"ControlNet preprocessor {self.name!r}: resolution {resolution} is outside "
                                 f"{low}..{high}")
        values = [self._setting(slider, value) for slider, value in
                  ((self.threshold_a, threshold_a), (self.threshold_b, threshold_b))]
        context = RunContext(module=self.name, seed=seed, annotators_dir=annotators_dir, device=device)
        result = self.function(_rgb(image), int(resolution), values[0], values[1], context)
        return Image.fromarray(_grey_to_rgb(result))

    def _setting(self, slider: Slider | None, value: float | None) -> float | None:
        if slider is None:
            return None
        if value is None:
            value = slider.default
        if not slider.minimum <= value <= slider.maximum:  # also refuses NaN
            raise BrushworkError(f"ControlNet preprocessor {self.name!r}: {slider.name} {value} is outside "
                                 f"{slider.minimum}..{slider.maximum}")
        return int(value) if slider.step == 1 else float(value)


# ---- classic modules: no weights ---------------------------------------------------------------------------

def _none(pixels, resolution, a, b, context):
    return pixels


def _invert(pixels, resolution, a, b, context):
    """For black lines on white (a drawing): white lines on black, as line ControlNets want."""
    return 255 - pixels


def _canny(pixels, resolution, low, high, context):
    """OpenCV's Canny on the colour picture (gradients across channels), hysteresis between low and high."""
    padded, crop = _padded(pixels, resolution)
    return cv2.Canny(padded, low, high)[crop]


def _threshold(pixels, resolution, level, b, context):
    """White where every channel is above `level`, black elsewhere."""
    padded, crop = _padded(pixels, resolution)
    return np.where(padded.min(axis=2) > level, 255, 0).astype(np.uint8)[crop]


def _scribble_xdog(pixels, resolution, level, b, context):
    """A scribble from the difference of two Gaussians (XDoG), white where it exceeds `level`."""
    padded, crop = _padded(pixels, resolution)
    fine = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 0.5)
    coarse = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    # In int32: the extension's uint8 product wraps round, dropping its strongest lines.
    return np.where(2 * (255 - dog.astype(np.int32)) > level, 255, 0).astype(np.uint8)[crop]


def _lineart_standard(pixels, resolution, a, b, context):
    """The extension's own classic lineart: how much darker each pixel is than its blurred surroundings,
    scaled so the median line is mid-grey. For black lines on a light background."""
    padded, crop = _padded(pixels, resolution)
    x = padded.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    lines = intensity[intensity > 8]
    intensity *= 127 / max(16.0, float(np.median(lines)) if lines.size else 16.0)
    return intensity.clip(0, 255).astype(np.uint8)[crop]


def _softedge_classic(pixels, resolution, a, b, context):
    """A soft edge map without a network: the gradient magnitude at two blur scales, brightest edge white.
    brushwork's own APPROXIMATION of softedge_hed / softedge_pidinet (the extension runs the HED or PiDiNet
    network there): thick, grey-graded edges of the same kind, for a soft-edge ControlNet when the annotator
    weights are not at hand, but not the networks' maps."""
    padded, crop = _padded(pixels, resolution)
    x = padded.astype(np.float32) / 255.0
    magnitude = np.zeros(x.shape[:2], np.float32)
    for sigma in (1.0, 2.5):  # fine and coarse edges, scale-normalised so both count alike
        blurred = cv2.GaussianBlur(x, (0, 0), sigma)
        gx, gy = cv2.Sobel(blurred, cv2.CV_32F, 1, 0), cv2.Sobel(blurred, cv2.CV_32F, 0, 1)
        magnitude += sigma * np.sqrt(gx ** 2 + gy ** 2).max(axis=2)
    magnitude /= max(float(magnitude.max()), 1e-6)
    return (magnitude * 255).clip(0, 255).astype(np.uint8)[crop]


def _tile_resample(pixels, resolution, rate, b, context):
    """The picture shrunk by `rate` (area filter); unchanged below 1.1, as in the extension."""
    if rate < 1.1:
        return pixels
    h, w = pixels.shape[:2]
    return cv2.resize(pixels, (max(1, int(w / rate)), max(1, int(h / rate))), interpolation=cv2.INTER_AREA)


def _tile_colorfix(pixels, resolution, variation, sharpness, context):
    """The picture as it is: tile_colorfix's "Variation" (and "+sharp"'s "Sharpness") act during sampling,
    where the extension swaps the blurred colours of the denoised latent for the input's; the map is unchanged."""
    return pixels


def _blur_gaussian(pixels, resolution, sigma, b, context):
    return cv2.GaussianBlur(_scaled(pixels, resolution), (0, 0), sigma)


def _colour_grid(pixels, resolution, a, b, context):
    """The T2I-Adapter colour map: short side to `resolution`, then a mosaic of 64 x 64-pixel cells (one cell
    at least, where the extension fails on pictures under 64 pixels)."""
    h, w = pixels.shape[:2]
    size = (resolution, round(h / w * resolution)) if w <= h else (round(w / h * resolution), resolution)
    scaled = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    cells = cv2.resize(scaled, (max(1, size[0] // 64), max(1, size[1] // 64)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(cells, size, interpolation=cv2.INTER_NEAREST)


def _shuffle(pixels, resolution, a, b, context):
    """The picture randomly warped (the content-shuffle ControlNet's input): every pixel is fetched from a
    place given by two smooth random fields. Seeded by the job's seed, so the same seed warps the same way."""
    scaled = _scaled(pixels, resolution)
    h, w = scaled.shape[:2]
    rng = np.random.default_rng(context.seed)
    x = _noise_disk(rng, h, w, 256) * float(w - 1)
    y = _noise_disk(rng, h, w, 256) * float(h - 1)
    return cv2.remap(scaled, np.stack([x, y], axis=2).astype(np.float32), None, cv2.INTER_LINEAR)


def _noise_disk(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """A smooth random field in [0, 1]: uniform noise on a grid of `cell`-pixel cells, cubic-interpolated."""
    noise = rng.uniform(0.0, 1.0, size=(h // cell + 2, w // cell + 2))
    noise = cv2.resize(noise, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)[cell:cell + h, cell:cell + w]
    noise -= noise.min()
    return noise / max(float(noise.max()), 1e-12)


# ---- learned modules: annotator networks through controlnet_aux --------------------------------------------

def _learned(annotator: str, a: str | None = None, b: str | None = None, **options) -> ModuleFunction:
    """A module running `annotator` with controlnet_aux call `options`; the sliders go to arguments `a`, `b`."""

    def run(pixels, resolution, threshold_a, threshold_b, context):
        padded, crop = _padded(pixels, resolution)
        arguments = dict(options)
        if a is not None:
            arguments[a] = threshold_a
        if b is not None:
            arguments[b] = threshold_b
        return annotators.detect(context.module, annotator, padded, arguments, context.annotators_dir,
                                 context.device)[crop]

    return run


INVERT = "invert (from white bg & black line)"
LINEART_STANDARD = "lineart_standard (from white bg & black line)"
_REMOVE_NEAR = Slider("Remove Near %", 0, 100, 0, step=0.1)
_REMOVE_BACKGROUND = Slider("Remove Background %", 0, 100, 0, step=0.1)
_VARIATION = Slider("Variation", 3, 32, 8, step=1)

_MODULES = (
    Preprocessor("none", False, None, None, False, _none),
    Preprocessor(INVERT, False, None, None, False, _invert),
    Preprocessor("canny", False, Slider("Low Threshold", 1, 255, 100, step=1),
                 Slider("High Threshold", 1, 255, 200, step=1), True, _canny),
    Preprocessor("threshold", False, Slider("Binarization Threshold", 0, 255, 127), None, True, _threshold),
    Preprocessor("scribble_xdog", False, Slider("XDoG Threshold", 1, 64, 32), None, True, _scribble_xdog),
    Preprocessor(LINEART_STANDARD, False, None, None, True, _lineart_standard),
    Preprocessor("softedge_classic", False, None, None, True, _softedge_classic),
    Preprocessor("tile_resample", False, Slider("Down Sampling Rate", 1, 8, 1), None, False, _tile_resample),
    Preprocessor("tile_colorfix", False, _VARIATION, None, False, _tile_colorfix),
    Preprocessor("tile_colorfix+sharp", False, _VARIATION, Slider("Sharpness", 0, 2, 1), False, _tile_colorfix),
    Preprocessor("blur_gaussian", False, Slider("Sigma", 0.01, 64, 9), None, True, _blur_gaussian),
    Preprocessor("t2ia_color_grid", False, None, None, True, _colour_grid),
    Preprocessor("shuffle", False, None, None, True, _shuffle),
    Preprocessor("depth_midas", True, None, None, True, _learned("midas")),
    Preprocessor("normal_midas", True, Slider("Normal Background Threshold", 0, 1, 0.4), None, True,
                 _learned("midas", a="bg_th", depth_and_normal=True)),
    Preprocessor("depth_zoe", True, None, None, True, _learned("zoe")),
    Preprocessor("depth_leres", True, _REMOVE_NEAR, _REMOVE_BACKGROUND, True,
                 _learned("leres", a="thr_a", b="thr_b", boost=False)),
    Preprocessor("depth_leres++", True, _REMOVE_NEAR, _REMOVE_BACKGROUND, True,
                 _learned("leres", a="thr_a", b="thr_b", boost=True)),
    Preprocessor("normal_bae", True, None, None, True, _learned("normal_bae")),
    Preprocessor("openpose", True, None, None, True,
                 _learned("openpose", include_body=True, include_hand=False, include_face=False)),
    Preprocessor("openpose_face", True, None, None, True,
                 _learned("openpose", include_body=True, include_hand=False, include_face=True)),
    Preprocessor("openpose_faceonly", True, None, None, True,
                 _learned("openpose", include_body=False, include_hand=False, include_face=True)),
    Preprocessor("openpose_hand", True, None, None, True,
                 _learned("openpose", include_body=True, include_hand=True, include_face=False)),
    Preprocessor("openpose_full", True, None, None, True,
                 _learned("openpose", include_body=True, include_hand=True, include_face=True)),
    Preprocessor("mlsd", True, Slider("MLSD Value Threshold", 0.01, 2, 0.1),
                 Slider("MLSD Distance Threshold", 0.01, 20, 0.1), True, _learned("mlsd", a="thr_v", b="thr_d")),
    Preprocessor("lineart_realistic", True, None, None, True, _learned("lineart", coarse=False)),
    Preprocessor("lineart_coarse", True, None, None, True, _learned("lineart", coarse=True)),
    Preprocessor("lineart_anime", True, None, None, True, _learned("lineart_anime")),
    Preprocessor("softedge_hed", True, None, None, True, _learned("hed", safe=False, scribble=False)),
    Preprocessor("softedge_hedsafe", True, None, None, True, _learned("hed", safe=True, scribble=False)),
    Preprocessor("scribble_hed", True, None, None, True, _learned("hed", safe=False, scribble=True)),
    Preprocessor("softedge_pidinet", True, None, None, True, _learned("pidinet", safe=False, scribble=False)),
    Preprocessor("softedge_pidisafe", True, None, None, True, _learned("pidinet", safe=True, scribble=False)),
    Preprocessor("scribble_pidinet", True, None, None, True, _learned("pidinet", safe=False, scribble=True)),
    Preprocessor("t2ia_sketch_pidi", True, None, None, True, _learned("pidinet", apply_filter=True)),
    Preprocessor("softedge_teed", True, Slider("Safe Steps", 0, 10, 2, step=1), None, True,
                 _learned("teed", a="safe_steps")),
)
PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in _MODULES}

# The extension's internal names (its API takes them too) and names from its first releases.
ALIASES: dict[str, str] = {
    "invert": INVERT, "lineart_standard": LINEART_STANDARD, "lineart": "lineart_realistic",
    "color": "t2ia_color_grid", "depth": "depth_midas", "normal_map": "normal_midas", "hed": "softedge_hed",
    "hed_safe": "softedge_hedsafe", "fake_scribble": "scribble_hed", "pidinet": "softedge_pidinet",
    "pidinet_safe": "softedge_pidisafe", "pidinet_scribble": "scribble_pidinet", "pidinet_sketch": "t2ia_sketch_pidi",
    "te_hed": "softedge_teed",
}
# Extension modules brushwork does not run: controlnet_aux 0.0.10 has no annotator for them, or needs a
# package brushwork does not ship (mediapipe, mmpose, onnxruntime).
NOT_OFFERED: frozenset[str] = frozenset({
    "seg_ofade20k", "oneformer_ade20k", "seg_ofcoco", "oneformer_coco", "seg_ufade20k", "segmentation",
    "seg_anime_face", "anime_face_segment", "dw_openpose_full", "animal_openpose", "depth_anything",
    "depth_anything_v2", "depth_hand_refiner", "mediapipe_face", "lineart_anime_denoise",
    "densepose (pruple bg & purple torso)", "densepose_parula (black bg & blue torso)",
    "recolor_luminance", "recolor_intensity",
})


def module_name(name: str) -> str:
    """The canonical (extension UI) name of module `name` or of its old alias; BrushworkError listing the
    choices otherwise."""
    if name in PREPROCESSORS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    known = " is an sd-webui-controlnet module brushwork does not run" if name in NOT_OFFERED else " is unknown"
    raise BrushworkError(f"ControlNet preprocessor {name!r}{known}; choose one of: {', '.join(PREPROCESSORS)}")


def preprocess(module: str, image: Image.Image, resolution: int = 512, threshold_a: float | None = None,
               threshold_b: float | None = None, annotators_dir: Path | None = None, *, seed: int = 0,
               device: str = "cpu") -> Image.Image:
    """The RGB control map of `image` by `module` (a name or alias), computed with the picture's short side at
    `resolution` as the extension does (modules with `uses_resolution` False keep its size). None thresholds
    are the module's defaults; learned modules read their weights from `annotators_dir` only."""
    return PREPROCESSORS[module_name(module)].run(image, resolution, threshold_a, threshold_b, annotators_dir,
                                                  seed=seed, device=device)
