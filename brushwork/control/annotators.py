"""The learned ControlNet preprocessors: annotator networks run through controlnet_aux 0.0.10, with weights
from the user's annotators folder only.

Weights. Each annotator loads the files controlnet_aux's `from_pretrained(folder)` opens, under the names it
expects (those of the lllyasviel/Annotators repository on the Hugging Face Hub, where the extension also gets
them). They sit in the annotators folder (`<models>/ControlNet/annotators/`), flat, or in the sub-folder
sd-webui-controlnet keeps them in, so its `annotator/downloads/` folder works as is. Nothing is ever
downloaded: controlnet_aux is only called with a folder that holds every file, so it never reaches for the
Hub, and a missing file is a BrushworkError naming the module, the file and the folder.

Safety. The files are pickles. controlnet_aux opens them with a bare `torch.load(path)`: on torch >= 2.6 that
means `weights_only=True`, on older torch it unpickles anything, code included. So brushwork first reads
every file itself with `torch.load(weights_only=True)` (`models.single_file.read_pickled`), which refuses
anything but tensors and plain data; a file that would run code never reaches controlnet_aux.
"""

from __future__ import annotations

import functools
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brushwork.errors import BrushworkError, ModelLoadError
from brushwork.models.single_file import read_pickled

CONTROLNET_AUX = "controlnet-aux==0.0.10"  # the version whose file names and call arguments this file follows
ANNOTATORS_REPO = "lllyasviel/Annotators"


@dataclass(frozen=True)
class Annotator:
    """One controlnet_aux detector and the weights it loads."""

    detector: str  # the controlnet_aux class
    files: tuple[str, ...]  # every file from_pretrained opens; the first is its `filename=` argument
    extension_folder: str  # sd-webui-controlnet's sub-folder of annotator/downloads/ for these files
    source: str = ANNOTATORS_REPO  # where the user can download them by hand
    takes_image_resolution: bool = True  # TEEDdetector's call has no image_resolution argument


ANNOTATORS: dict[str, Annotator] = {
    "hed": Annotator("HEDdetector", ("ControlNetHED.pth",), "hed"),
    "pidinet": Annotator("PidiNetDetector", ("table5_pidinet.pth",), "pidinet"),
    "midas": Annotator("MidasDetector", ("dpt_hybrid-midas-501f0c75.pt",), "midas"),
    "zoe": Annotator("ZoeDetector", ("ZoeD_M12_N.pt",), "zoedepth"),
    "leres": Annotator("LeresDetector", ("res101.pth", "latest_net_G.pth"), "leres"),
    # controlnet_aux loads body, hand and face networks together, whichever parts a module draws.
    "openpose": Annotator("OpenposeDetector", ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
                          "openpose"),
    "mlsd": Annotator("MLSDdetector", ("mlsd_large_512_fp32.pth",), "mlsd"),
    "normal_bae": Annotator("NormalBaeDetector", ("scannet.pt",), "normal_bae"),
    # The realistic and the coarse networks load together too.
    "lineart": Annotator("LineartDetector", ("sk_model.pth", "sk_model2.pth"), "lineart"),
    "lineart_anime": Annotator("LineartAnimeDetector", ("netG.pth",), "lineart_anime"),
    "teed": Annotator("TEEDdetector", ("7_model.pth",), "TEED",
                      source="bdsqlsz/qinglong_controlnet-lllite (its Annotators/ folder)",
                      takes_image_resolution=False),
}


def weights_folder(module: str, annotator: Annotator, annotators_dir: Path | None) -> Path:
    """The folder holding all of `annotator`'s files: the annotators folder itself, else the extension's
    sub-folder of it. BrushworkError naming the module, the missing files and the folder otherwise."""
    where = f"the annotators folder (<models>/ControlNet/annotators/, flat or in its {annotator.extension_folder}/)"
    if annotators_dir is not None:
        root = Path(annotators_dir)
        for folder in (root, root / annotator.extension_folder):
            if all((folder / name).is_file() for name in annotator.files):
                return folder
        where = f"{root} (or {root / annotator.extension_folder})"
    missing = [name for name in annotator.files
               if annotators_dir is None or not (Path(annotators_dir) / name).is_file()]
    raise BrushworkError(
        f"ControlNet preprocessor {module!r} needs the annotator weights {', '.join(missing)}: put "
        f"{'it' if len(missing) == 1 else 'them'} in {where}. The files are in {annotator.source} on the "
        "Hugging Face Hub; brushwork never downloads them itself"
    )


def detect(module: str, key: str, image: np.ndarray, options: dict[str, Any], annotators_dir: Path | None,
           device: str) -> np.ndarray:
    """Run annotator `key` for `module` on `image` (H x W x 3 uint8, sides multiples of 64 as the networks
    want) with controlnet_aux call `options`; the map comes back at the image's size."""
    annotator = ANNOTATORS[key]
    folder = weights_folder(module, annotator, annotators_dir)
    try:
        with warnings.catch_warnings():  # importing it imports every detector: mediapipe, timm registry notices
            warnings.simplefilter("ignore", UserWarning)
            import controlnet_aux  # noqa: F401  (imported here only to say clearly when it is missing)
    except ImportError as err:
        raise BrushworkError(
            f"ControlNet preprocessor {module!r} runs on the controlnet_aux package, which is not installed: "
            f"pip install {CONTROLNET_AUX}"
        ) from err
    # A replaced file has another size or time, so it is loaded afresh.
    stamps = tuple((name, (folder / name).stat().st_mtime_ns, (folder / name).stat().st_size)
                   for name in annotator.files)
    detector = _detector(key, folder, stamps, device)
    side = min(image.shape[:2])
    # At its short side the image is already the size asked for and a multiple of 64, so controlnet_aux's
    # own resizing (short side to `detect_resolution`, sides rounded to 64) leaves it as it is.
    sizes = {"detect_resolution": side}
    if annotator.takes_image_resolution:
        sizes["image_resolution"] = side
    result = detector(image, output_type="np", **sizes, **options)
    if isinstance(result, tuple):  # MidasDetector(depth_and_normal=True) returns (depth, normal)
        result = result[1]
    return result


_LOAD_LOCK = threading.Lock()  # loads swap sys.argv (below), so one at a time


@functools.lru_cache(maxsize=2)  # a job uses one or two annotators; older ones are freed
def _detector(key: str, folder: Path, stamps: tuple[tuple[str, int, int], ...], device: str) -> Any:
    import controlnet_aux

    annotator = ANNOTATORS[key]
    for name in annotator.files:
        read_pickled(folder / name, allow_pickle=True)  # the weights_only gate, see the module docstring
    with _LOAD_LOCK:
        # LeresDetector parses sys.argv with argparse (its pix2pix options), so brushwork's own flags
        # (--model ...) would leak into it: the loaders see a bare command line.
        saved_argv, sys.argv = sys.argv, sys.argv[:1]
        try:
            detector = getattr(controlnet_aux, annotator.detector).from_pretrained(
                str(folder), filename=annotator.files[0]
            )
        except Exception as err:  # a state dict that does not fit the network: name the files, keep the cause
            raise ModelLoadError(
                f"controlnet_aux could not load the annotator weights {', '.join(annotator.files)} "
                f"from {folder} ({type(err).__name__}: {err}); are they the files from {annotator.source}?"
            ) from err
        finally:
            sys.argv = saved_argv
    return detector.to(device)
