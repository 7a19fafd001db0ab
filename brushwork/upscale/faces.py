"""Face restoration as A1111 does it: GFPGAN, CodeFormer (and RestoreFormer) from the models folder.

    from brushwork.upscale import FaceNetworkCache, list_face_restorers, restore_faces
    cache = FaceNetworkCache()                   # owned by the caller; keeps the loaded network
    fixed = restore_faces(picture, "CodeFormer", store, visibility=1.0, codeformer_weight=0.5, cache=cache)

Weights are the user's, in A1111's folders: `GFPGAN/` (GFPGANv1.4, and RestoreFormer) and `Codeformer/`
(codeformer-v0.1.0), as `.safetensors`, or as `.pth` with the store's pickle opt-in (then read with
`torch.load(weights_only=True)`). spandrel recognises the networks from their tensors; CodeFormer's
architecture is in its companion package `spandrel_extra_arches`.

Each picture goes through these steps:
  1. find faces      OpenCV's Haar cascade for frontal faces (or any `FaceDetector` given). YuNet would
                     find more faces, but needs an ONNX file that no package ships; the Haar cascade is
                     the detector that comes with OpenCV itself. OpenCV 5 moved the cascade classifier out
                     of its main package, so this needs OpenCV 4.x (`opencv-python-headless<5`).
  2. crop            each face box, widened to the margin of the FFHQ crops the networks were trained on,
                     is warped (a similarity transform) to the network's square input: 512x512.
  3. restore         the crop in [-1, 1] through the network; CodeFormer gets its fidelity weight w.
  4. paste back      the restored crop is warped back and blended through a mask eroded and blurred at
                     its edge (facexlib's `paste_faces_to_input_image`, which A1111 uses); pixels the mask
                     does not reach keep their exact values.
  5. visibility      the whole result blended with the original (A1111's face-restoration visibility).

Unlike A1111, a picture restores the same every time: GFPGAN's StyleGAN decoder uses its trained noise
maps instead of fresh random noise (`randomize_noise=False`).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from PIL import Image

from brushwork.errors import BrushworkError, ModelLoadError
from brushwork.upscale.networks import NetworkCache, read_weights

if TYPE_CHECKING:  # spandrel is imported on first load: importing its ~50 architectures takes a while
    from spandrel import ArchRegistry, ImageModelDescriptor

    from brushwork.models.store import ModelStore

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # a face: x, y, width, height in pixels
FaceDetector = Callable[[np.ndarray], Sequence[Box]]  # an RGB uint8 [h, w, 3] picture -> its faces

FACE_SIZE = 512  # the square input of every released face network (FFHQ crops)
# A Haar box spans brows to chin; the FFHQ crops show the whole head: eyes at 47% of the height,
# 25% of the width apart (about 40% of a Haar box). So the crop is 1.6 box widths, centred a little
# above the box's middle.
CROP_SCALE = 1.6
CROP_CENTRE_Y = 0.45  # the crop's centre, as a fraction of the box height from its top
DETECT_SIDE = 1024  # larger pictures are searched for faces at this size (long side), much faster
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
# What spandrel's GFPGANArch builds, whatever the file: the one size every GFPGAN release (1.3, 1.4) has.
GFPGAN_RELEASED = {
    "out_size": 512, "num_style_feat": 512, "channel_multiplier": 2, "num_mlp": 8,
    "different_w": True, "narrow": 1, "sft_half": True,
}


# -- which restorers there are -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    name: str  # as A1111's /sdapi/v1/face-restorers lists it
    folder: str  # below the models folder, A1111's spelling
    download: str  # the stem of the file users have (named in the message when none is found)
    keyword: str | None  # a file's name must hold it (the GFPGAN folder holds RestoreFormer too)
    always_listed: bool  # A1111 lists CodeFormer and GFPGAN with or without weights


_KINDS = (
    _Kind("CodeFormer", "Codeformer", "codeformer-v0.1.0", None, True),
    _Kind("GFPGAN", "GFPGAN", "GFPGANv1.4", "gfpgan", True),
    _Kind("RestoreFormer", "GFPGAN", "RestoreFormer", "restoreformer", False),
)


@dataclass(frozen=True)
class FaceRestorer:
    """A face restorer by A1111 name, with the folder its weights are read from and the file found there."""

    name: str
    cmd_dir: str | None  # the folder (None without a models folder), as A1111's API shows it
    path: Path | None  # the weights; None when the folder has none

    @property
    def available(self) -> bool:
        return self.path is not None


def list_face_restorers(store: ModelStore | None) -> list[FaceRestorer]:
    """CodeFormer and GFPGAN, as A1111 lists them (installed or not: see `available`), then RestoreFormer
    when its weights are in `GFPGAN/`."""
    restorers = [_restorer(kind, store) for kind in _KINDS]
    return [r for kind, r in zip(_KINDS, restorers) if kind.always_listed or r.available]


def find_face_restorer(name: str, store: ModelStore | None) -> FaceRestorer:
    """The restorer `name` means (any case), with its weights. ModelLoadError, naming the folder and the
    file to place, when it has none; listing the choices for an unknown name."""
    kind = next((k for k in _KINDS if k.name.lower() == name.strip().lower()), None)
    if kind is None:
        choices = ", ".join(k.name for k in _KINDS)
        raise ModelLoadError(f"unknown face restorer {name!r}; choose one of: {choices}")
    restorer = _restorer(kind, store)
    if restorer.path is None:
        place = f"place {kind.download}.pth (or .safetensors) in"
        if store is None or store.models_dir is None:
            raise ModelLoadError(
                f"face restoration needs {kind.name} weights: no --models-dir given ({place} its {kind.folder} folder)"
            )
        raise ModelLoadError(f"face restoration needs {kind.name} weights: {place} {restorer.cmd_dir}")
    return restorer


def _restorer(kind: _Kind, store: ModelStore | None) -> FaceRestorer:
    if store is None or store.models_dir is None:
        return FaceRestorer(kind.name, None, None)
    folder = store.models_dir / kind.folder
    files = [path for path in _weight_files(folder, store.models_dir) if _holds(kind, path)]
    # The file users download first (GFPGANv1.4 over v1.3), a .safetensors before a pickle, then by name.
    files.sort(key=lambda p: (p.stem.lower() != kind.download.lower(), p.suffix.lower() != ".safetensors", p.name))
    return FaceRestorer(kind.name, str(folder), files[0] if files else None)


def _holds(kind: _Kind, path: Path) -> bool:
    name = path.name.lower()
    if kind.keyword is None:
        return True
    if kind.name == "GFPGAN" and "restoreformer" in name:
        return False
    return kind.keyword in name


def _weight_files(folder: Path, models_dir: Path) -> list[Path]:
    """Weight files below `folder`, sorted; none that a link takes outside the models folder."""
    from brushwork.models.store import WEIGHT_SUFFIXES

    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES and path.resolve().is_relative_to(models_dir):
            found.append(path.resolve())
    return found


# -- the networks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceNetwork:
    """A loaded face restoration network and what spandrel says about it."""

    path: Path
    descriptor: ImageModelDescriptor
    architecture: str  # "GFPGAN", "RestoreFormer" or "CodeFormer"
    size: int  # its square input and output, in pixels

    @property
    def device(self) -> torch.device:
        return self.descriptor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.descriptor.dtype

    def __call__(self, face: np.ndarray, *, codeformer_weight: float = 0.5) -> np.ndarray:
        """An RGB uint8 [size, size, 3] face crop restored, the same shape. Every one of these networks
        works in [-1, 1]; CodeFormer also takes its fidelity weight w (0: the most change, 1: the least)."""
        pixels = torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1)[None]
        pixels = (pixels.to(self.device, torch.float32) / 127.5 - 1).to(self.dtype)
        model = self.descriptor.model
        with torch.inference_mode():
            if self.architecture == "GFPGAN":
                restored = model(pixels, return_rgb=False, randomize_noise=False)[0]
            elif self.architecture == "CodeFormer":
                restored = model(pixels, weight=codeformer_weight)[0]
            else:
                restored = model(pixels)[0]
        restored = ((restored.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return restored[0].permute(1, 2, 0).cpu().numpy()


def load_face_network(
    path: Path,
    *,
    allow_pickle: bool,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FaceNetwork:
    """Load the face network in `path` onto `device`, in `dtype` where the architecture supports it
    (else float32). ModelLoadError for anything but a GFPGAN, RestoreFormer or CodeFormer network."""
    from spandrel import ModelLoader, UnsupportedModelError

    state = read_weights(path, allow_pickle=allow_pickle)  # refuses pickles without the opt-in
    try:
        descriptor = ModelLoader(registry=_face_registry()).load_from_state_dict(state)
    except UnsupportedModelError:
        raise ModelLoadError(
            f"{path.name} is not a face restoration network brushwork recognises: spandrel finds no GFPGAN, "
            "RestoreFormer or CodeFormer weights in it; is the file complete?"
        ) from None
    except Exception as error:  # a known architecture whose tensors do not fit it
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"{path.name} looks like a face network but its weights do not fit: {first_line}") from error
    name = descriptor.architecture.name
    supported = {torch.float32: True, torch.float16: descriptor.supports_half, torch.bfloat16: descriptor.supports_bfloat16}
    descriptor.to(torch.device(device)).to(dtype if supported.get(dtype) else torch.float32).eval()
    size = 2 ** descriptor.model.log_size if name == "GFPGAN" else FACE_SIZE
    log.info("loaded %s: %s, %dx%d faces", path.name, name, size, size)
    return FaceNetwork(path=path, descriptor=descriptor, architecture=name, size=size)


class FaceNetworkCache(NetworkCache):
    """`NetworkCache` for face networks: one loaded at a time unless asked for more."""

    def __init__(self, max_loaded: int = 1):
        super().__init__(max_loaded, load=load_face_network)


def gfpgan_sizes(state: Mapping[str, torch.Tensor]) -> dict[str, object]:
    """The GFPGANv1Clean hyperparameters a state dict's tensor shapes imply (every released file gives
    `GFPGAN_RELEASED`). spandrel builds that one size whatever the file; reading the sizes lets a
    smaller GFPGAN, as the tests build, load as well."""
    from spandrel.util import get_seq_len

    log_size = get_seq_len(state, "toRGB") + 2  # one toRGB per resolution from 8 up to out_size
    unet_channels = state["final_conv.weight"].shape[0]  # channels["4"] = 512 * narrow / 2
    narrow = unet_channels / 256
    # channels["64"] = 256 * channel_multiplier * narrow / 2: the input of the 64-pixel toRGB (toRGB.3)
    multiplier = 2 * state["toRGB.3.weight"].shape[1] / unet_channels if log_size >= 6 else 2
    num_style_feat = state["stylegan_decoder.style_mlp.1.weight"].shape[1]
    linears = [k for k in state if k.startswith("stylegan_decoder.style_mlp.") and k.endswith(".weight")]
    sft_half = state["condition_scale.0.2.weight"].shape[0] == state["condition_scale.0.0.weight"].shape[0]
    return {
        "out_size": 2**log_size,
        "num_style_feat": num_style_feat,
        "channel_multiplier": _whole(multiplier),
        "num_mlp": len(linears),
        "different_w": state["final_linear.weight"].shape[0] != num_style_feat,
        "narrow": _whole(narrow),
        "sft_half": sft_half,
    }


def _whole(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


@functools.cache
def _face_registry() -> ArchRegistry:
    """spandrel's GFPGAN and RestoreFormer, and spandrel_extra_arches' CodeFormer, and nothing else: a
    super-resolution network in a face folder is refused rather than run. Our own registry: spandrel's
    global one is left as it is."""
    from spandrel import ArchRegistry, ArchSupport, ImageModelDescriptor, SizeRequirements
    from spandrel.architectures.GFPGAN import GFPGAN, GFPGANArch
    from spandrel.architectures.RestoreFormer import RestoreFormerArch
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormerArch

    class SizedGFPGANArch(GFPGANArch):
        """spandrel's GFPGAN, at the size the tensors show."""

        def load(self, state_dict):  # type: ignore[override]
            sizes = gfpgan_sizes(state_dict)
            if sizes == GFPGAN_RELEASED:
                return super().load(state_dict)  # exactly as spandrel loads the released files
            model = GFPGAN(**sizes, decoder_load_path=None, fix_decoder=False, input_is_latent=True)
            return ImageModelDescriptor(
                model, state_dict, architecture=self, purpose="FaceSR", tags=[], supports_half=False,
                supports_bfloat16=True, scale=1, input_channels=3, output_channels=3,
                size_requirements=SizeRequirements(minimum=int(sizes["out_size"])),  # type: ignore[call-overload]
                call_fn=lambda model, image: model(image)[0],
            )

    registry = ArchRegistry()
    for architecture in (SizedGFPGANArch(), RestoreFormerArch(), CodeFormerArch()):
        registry.add(ArchSupport.from_architecture(architecture))
    return registry


# -- finding faces, cropping, pasting back --------------------------------------------------------------


def haar_faces(pixels: np.ndarray) -> list[Box]:
    """Frontal faces in an RGB uint8 picture, largest first, by OpenCV's bundled Haar cascade.
    ModelLoadError when this OpenCV has no cascade classifier (OpenCV 5) or lacks the cascade file."""
    classifier = _haar_classifier()  # one per call: a CascadeClassifier is not safe to share between threads
    gray = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    scale = min(1.0, DETECT_SIDE / max(gray.shape))
    if scale < 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    smallest = max(24, min(gray.shape) // 20)
    found = classifier.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
    boxes = [tuple(round(int(v) / scale) for v in box) for box in found]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)  # type: ignore[return-value, arg-type]


def _haar_classifier() -> cv2.CascadeClassifier:
    if not hasattr(cv2, "CascadeClassifier"):
        raise ModelLoadError(
            f"face detection needs OpenCV's Haar cascade classifier, which OpenCV {cv2.__version__} no longer "
            'includes: install OpenCV 4 (pip install "opencv-python-headless>=4.9,<5")'
        )
    folder = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or ".")
    if not (folder / HAAR_CASCADE).is_file():
        raise ModelLoadError(
            f"face detection needs OpenCV's {HAAR_CASCADE}, which is not in {folder}: reinstall "
            'opencv-python-headless 4.x (pip install "opencv-python-headless>=4.9,<5")'
        )
    classifier = cv2.CascadeClassifier(str(folder / HAAR_CASCADE))
    if classifier.empty():
        raise ModelLoadError(f"OpenCV could not read its face cascade {folder / HAAR_CASCADE}; reinstall OpenCV")
    return classifier


def crop_transform(box: Box, size: int) -> np.ndarray:
    """The 2x3 affine matrix that maps a picture onto the `size`x`size` crop around face `box`."""
    x, y, width, height = box
    side = CROP_SCALE * max(width, height, 1)
    centre_x, centre_y = x + width / 2, y + CROP_CENTRE_Y * height
    s = size / side
    return np.array([[s, 0, size / 2 - s * centre_x], [0, s, size / 2 - s * centre_y]], dtype=np.float64)


def crop_face(pixels: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    """The `size`x`size` RGB uint8 crop `transform` maps out of `pixels` (mirrored past the picture's edge)."""
    return cv2.warpAffine(pixels, transform, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def paste_face(canvas: np.ndarray, face: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """`canvas` (float32 [h, w, 3]) with the restored crop `face` warped back into place through a mask
    eroded and blurred at its edge, as facexlib pastes faces. Where the mask is 0 the canvas is unchanged."""
    height, width = canvas.shape[:2]
    size = face.shape[0]
    inverse = cv2.invertAffineTransform(transform)
    back = cv2.warpAffine(face.astype(np.float32), inverse, (width, height), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones((size, size), np.float32), inverse, (width, height), flags=cv2.INTER_LINEAR)
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    edge = int(math.sqrt(float(mask.sum()))) // 20  # the feather grows with the face
    if edge > 0:
        mask = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        mask = cv2.GaussianBlur(mask, (2 * edge + 1, 2 * edge + 1), 0)
    mask = mask[:, :, None]
    return canvas + mask * (back - canvas)


# -- restoring a picture ------------------------------------------------------------------------------


def restore_faces(
    image: Image.Image,
    restorer_name: str,
    store: ModelStore | None,
    visibility: float = 1.0,
    codeformer_weight: float = 0.5,
    *,
    cache: FaceNetworkCache | None = None,
    detector: FaceDetector | None = None,
) -> Image.Image:
    """`image` with every face `detector` finds (default: `haar_faces`) restored by the named restorer
    ("CodeFormer", "GFPGAN", "RestoreFormer"), blended with the original by `visibility` (0: the original,
    1: fully restored). `codeformer_weight` is CodeFormer's fidelity w (0: the most change, 1: the least).

    The network comes from `store`'s models folder and runs on its device, with its pickle policy, kept in
    `cache` when one is given. A picture without faces comes back unchanged and loads nothing. The result
    is RGB (RGBA, its alpha kept, for a transparent picture); with `visibility` 0, the picture itself.
    """
    # 1. validate everything before loading anything
    for label, value in (("visibility", visibility), ("codeformer_weight", codeformer_weight)):
        if not 0 <= _number(value) <= 1:
            raise BrushworkError(f"{label} must be between 0 and 1, got {value!r}")
    restorer = find_face_restorer(restorer_name, store)  # the weights must exist, or a clear error
    if visibility == 0:
        return image.copy()
    transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    original = image.convert("RGBA").convert("RGB") if transparent else image.convert("RGB")

    # 2. find faces; none: nothing to load
    pixels = np.asarray(original, dtype=np.uint8)
    boxes = [tuple(int(v) for v in box) for box in (detector or haar_faces)(pixels)]
    boxes = [box for box in boxes if box[2] > 0 and box[3] > 0]
    if not boxes:
        log.info("no faces found in the %dx%d picture", *original.size)
        return _with_alpha(original.copy(), image, transparent)

    # 3. restore each face and paste it back
    assert store is not None and restorer.path is not None  # find_face_restorer found the weights in its folder
    cache = cache if cache is not None else FaceNetworkCache(max_loaded=1)
    network = cache.get(restorer.path, allow_pickle=store.allow_pickle, device=store.device, dtype=store.dtype)
    if network.architecture != restorer.name:  # running another network under this name would mislead
        right = next(kind for kind in _KINDS if kind.name == network.architecture)
        named = f", with {right.keyword!r} in the file name" if right.keyword else ""
        raise ModelLoadError(
            f"{restorer.path.name} is a {network.architecture} network, not {restorer.name}: "
            f"{network.architecture} weights go in the {right.folder} folder{named}"
        )
    restored = restore_with_network(original, network, boxes, codeformer_weight=codeformer_weight)

    # 4. visibility, as A1111 blends it
    if visibility < 1:
        restored = Image.blend(original, restored, float(visibility))
    return _with_alpha(restored, image, transparent)


def restore_with_network(
    image: Image.Image, network: FaceNetwork, boxes: Sequence[Box], *, codeformer_weight: float = 0.5
) -> Image.Image:
    """An RGB picture with the faces at `boxes` restored by `network` and pasted back, one after another."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    canvas = pixels.astype(np.float32)
    for box in boxes:
        transform = crop_transform(box, network.size)
        face = crop_face(pixels, transform, network.size)
        canvas = paste_face(canvas, network(face, codeformer_weight=codeformer_weight), transform)
    log.info("restored %d face(s) with %s (%s)", len(boxes), network.path.name, network.architecture)
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _with_alpha(result: Image.Image, image: Image.Image, transparent: bool) -> Image.Image:
    if transparent:
        result.putalpha(image.convert("RGBA").getchannel("A"))
    return result
