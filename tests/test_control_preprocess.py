"""ControlNet preprocessors: the extension's names, sizes, resize modes and maps, and the learned modules'
weights handling (a tiny random HED network stands in for the real one)."""

import argparse
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from brushwork.control import (
    PREPROCESSORS,
    RESIZE_MODES,
    fit_to_size,
    module_name,
    pixel_perfect_resolution,
    preprocess,
    resize_mode_name,
)
from brushwork.control.annotators import ANNOTATORS, weights_folder
from brushwork.control.preprocessors import INVERT, LINEART_STANDARD
from brushwork.errors import BrushworkError, ModelLoadError

CLASSIC = [name for name, p in PREPROCESSORS.items() if not p.learned]
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


def stripes() -> Image.Image:
    """300 x 100: a red, a green and a blue third, left to right."""
    image = Image.new("RGB", (300, 100))
    for i, colour in enumerate((RED, GREEN, BLUE)):
        image.paste(colour, (100 * i, 0, 100 * i + 100, 100))
    return image


def white_square(size=128, box=(32, 32, 95, 95)) -> tuple[Image.Image, np.ndarray]:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).rectangle(box, fill="white")
    return image, pixels(image)[:, :, 0] > 0


# ---- names ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alias, canonical", [
    ("depth", "depth_midas"), ("hed", "softedge_hed"), ("fake_scribble", "scribble_hed"),
    ("pidinet", "softedge_pidinet"), ("normal_map", "normal_midas"), ("lineart", "lineart_realistic"),
    ("invert", INVERT), ("lineart_standard", LINEART_STANDARD), ("color", "t2ia_color_grid"),
    ("canny", "canny"), ("depth_midas", "depth_midas"),
])
def test_module_names_and_old_aliases(alias, canonical):
    assert module_name(alias) == canonical


def test_unknown_module_lists_the_choices():
    with pytest.raises(BrushworkError, match="'cany' is unknown") as err:
        module_name("cany")
    assert "canny" in str(err.value) and "depth_midas" in str(err.value) and INVERT in str(err.value)
    with pytest.raises(BrushworkError, match="sd-webui-controlnet module brushwork does not run"):
        preprocess("segmentation", Image.new("RGB", (64, 64)))


def test_sliders_carry_the_extensions_defaults():
    canny = PREPROCESSORS["canny"]
    assert (canny.threshold_a.default, canny.threshold_b.default) == (100, 200)
    assert (canny.threshold_a.minimum, canny.threshold_a.maximum) == (1, 255)
    assert PREPROCESSORS["threshold"].threshold_a.default == 127
    assert PREPROCESSORS["scribble_xdog"].threshold_a.default == 32
    assert PREPROCESSORS["mlsd"].threshold_b.name == "MLSD Distance Threshold"


def test_threshold_outside_its_slider_is_refused():
    with pytest.raises(BrushworkError, match="Binarization Threshold 300 is outside 0..255"):
        preprocess("threshold", Image.new("RGB", (64, 64)), 64, threshold_a=300)
    with pytest.raises(BrushworkError, match="resolution 8192 is outside"):
        preprocess("canny", Image.new("RGB", (64, 64)), 8192)
    assert preprocess("color", Image.new("RGB", (64, 32)), 16).size == (32, 16)  # pixel perfect for tiny pictures


# ---- classic modules ---------------------------------------------------------------------------------------

def test_canny_finds_the_outline_of_a_square():
    image, square = white_square()
    edges = pixels(preprocess("canny", image, resolution=128))[:, :, 0] > 0
    square, kernel = square.astype(np.uint8), np.ones((3, 3), np.uint8)
    outline = cv2.dilate(square, kernel).astype(bool) & ~cv2.erode(square, kernel).astype(bool)
    assert edges.any() and not (edges & ~outline).any()  # nothing inside or outside the outline's 2-px band
    assert edges.sum() >= 0.9 * 4 * 64  # and the band is traced all round
    assert preprocess("canny", image, 128, threshold_a=255, threshold_b=255).getbbox() is not None  # a hard edge
    assert preprocess("canny", Image.new("RGB", (128, 128), "grey"), 128).getbbox() is None  # no edge, no line


def test_invert_and_transparency_on_white():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    out = preprocess("invert", Image.fromarray(source), resolution=512)
    assert out.size == (70, 40)  # invert keeps the picture's size
    assert (pixels(out) == 255 - source.astype(np.int32)).all()
    clear = preprocess(INVERT, Image.new("RGBA", (8, 8), (0, 0, 0, 0)))  # transparent = white = no line
    assert (pixels(clear) == 0).all()


def test_threshold_binarises_at_its_level():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (64, 1))  # 256 x 64, grey 0..255 left to right
    image = Image.fromarray(ramp).convert("RGB")
    out = pixels(preprocess("threshold", image, resolution=64, threshold_a=100))
    assert (out[:, :101] == 0).all() and (out[:, 101:] == 255).all()
    default = pixels(preprocess("threshold", image, resolution=64))
    assert (default[:, :128] == 0).all() and (default[:, 128:] == 255).all()  # 127 by default


@pytest.mark.parametrize("name", CLASSIC)
def test_every_classic_module_gives_rgb_at_the_expected_size(name):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    out = preprocess(name, image, resolution=100)  # short side to 100; worked on padded to 192 x 128
    assert out.mode == "RGB"
    assert out.size == ((150, 100) if PREPROCESSORS[name].uses_resolution else (90, 60))


def test_lineart_standard_and_softedge_classic_light_up_lines():
    drawing = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(drawing).line((20, 64, 108, 64), fill="black", width=3)
    lineart = pixels(preprocess(LINEART_STANDARD, drawing, 128))[:, :, 0]
    assert lineart[64, 30:100].min() > 100 and lineart[20].max() == 0
    image, square = white_square()
    soft = pixels(preprocess("softedge_classic", image, 128))[:, :, 0]
    assert soft[32, 64] > 150 and soft[64, 64] == 0 and soft[10, 64] == 0  # edge bright, flat parts dark


def test_colour_grid_is_a_mosaic_of_64_pixel_cells():
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8))
    grid = pixels(preprocess("color", image, resolution=128))
    assert grid.shape == (128, 192, 3)
    cells = grid.reshape(2, 64, 3, 64, 3)
    assert (cells == cells[:, :1, :, :1, :]).all()  # one colour per cell


def test_shuffle_is_seeded():
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    first, again = (pixels(preprocess("shuffle", image, 64, seed=5)) for _ in range(2))
    assert (first == again).all()
    assert not (first == pixels(preprocess("shuffle", image, 64, seed=6))).all()
    assert not (first == pixels(image)).all()


def test_tile_resample_downsamples_by_its_rate():
    image = Image.new("RGB", (200, 100), "white")
    assert preprocess("tile_resample", image, threshold_a=2).size == (100, 50)
    assert preprocess("tile_resample", image).size == (200, 100)  # rate 1: unchanged


# ---- resize modes and pixel perfect --------------------------------------------------------------------------

def test_resize_mode_names_ints_and_old_aliases():
    assert [resize_mode_name(i) for i in (0, 1, 2)] == list(RESIZE_MODES)
    assert resize_mode_name("Envelope (Outer Fit)") == "Resize and Fill"
    assert resize_mode_name("Scale to Fit (Inner Fit)") == "Crop and Resize"
    assert resize_mode_name(3) == "Just Resize"  # A1111's latent upscale, as the extension reads it
    for bad in ("Stretch", 4, True):
        with pytest.raises(ValueError, match="Just Resize, Crop and Resize, Resize and Fill"):
            resize_mode_name(bad)


def test_just_resize_stretches():
    out = pixels(fit_to_size(stripes(), 60, 30, "Just Resize"))
    assert out.shape == (30, 60, 3)
    assert tuple(out[15, 5]) == RED and tuple(out[15, 30]) == GREEN and tuple(out[15, 55]) == BLUE


def test_crop_and_resize_crops_the_sides():
    out = pixels(fit_to_size(stripes(), 100, 100, 1))
    assert out.shape == (100, 100, 3)
    assert (out == GREEN).all()  # the red and blue thirds were cut off


def test_resize_and_fill_centres_on_the_border_colour():
    out = pixels(fit_to_size(stripes(), 100, 100, "Resize and Fill"))
    assert out.shape == (100, 100, 3)
    # 300 x 100 fits as 100 x 33 at rows 33..65; the border's median colour is black
    assert (out[:33] == 0).all() and (out[66:] == 0).all()
    assert tuple(out[50, 10]) == RED and tuple(out[50, 50]) == GREEN and tuple(out[50, 90]) == BLUE
    lineart = Image.new("RGB", (200, 100), "white")
    ImageDraw.Draw(lineart).ellipse((80, 30, 120, 70), fill="black")
    assert (pixels(fit_to_size(lineart, 100, 100, "Envelope (Outer Fit)"))[:20] == 255).all()


def test_binary_maps_stay_binary_when_resized():
    image, _ = white_square(64, (10, 10, 40, 40))
    out = pixels(fit_to_size(image, 150, 150, "Just Resize"))
    assert set(np.unique(out)) <= {0, 255}


@pytest.mark.parametrize("image_size, target, mode, expected", [
    ((1024, 768), (512, 512), "Crop and Resize", 512),  # max(512/768, 512/1024) * 768
    ((1024, 768), (512, 512), "Resize and Fill", 384),  # min(...) * 768
    ((1024, 768), (512, 512), "Just Resize", 512),
    ((300, 500), (512, 768), "Crop and Resize", 512),  # 512/300 * 300
    ((300, 500), (512, 768), 2, 461),  # 768/500 * 300 = 460.8
    ((512, 512), (1024, 768), 0, 1024),
])
def test_pixel_perfect_resolution(image_size, target, mode, expected):
    assert pixel_perfect_resolution(image_size, target, mode) == expected


# ---- learned modules -----------------------------------------------------------------------------------------

def test_learned_module_without_weights_names_file_and_folder(tmp_path):
    image = Image.new("RGB", (64, 64))
    with pytest.raises(BrushworkError, match="'softedge_hed' needs the annotator weights ControlNetHED.pth") as err:
        preprocess("hed", image, 64, annotators_dir=tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(BrushworkError, match="ControlNet/annotators"):
        preprocess("depth", image, 64)  # no folder given at all
    (tmp_path / "body_pose_model.pth").write_bytes(b"")
    with pytest.raises(BrushworkError, match="needs the annotator weights hand_pose_model.pth, facenet.pth"):
        preprocess("openpose", image, 64, annotators_dir=tmp_path)


def test_weights_in_the_extensions_sub_folder_are_found(tmp_path):
    (tmp_path / "leres").mkdir()
    for name in ANNOTATORS["leres"].files:
        (tmp_path / "leres" / name).write_bytes(b"")
    assert weights_folder("depth_leres", ANNOTATORS["leres"], tmp_path) == tmp_path / "leres"


def test_learned_module_without_controlnet_aux_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "ControlNetHED.pth").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "controlnet_aux", None)  # makes `import controlnet_aux` fail
    with pytest.raises(BrushworkError, match="controlnet_aux package, which is not installed: pip install"):
        preprocess("softedge_hed", Image.new("RGB", (64, 64)), 64, annotators_dir=tmp_path)


def test_annotator_pickle_with_code_is_refused(tmp_path):
    torch.save({"options": argparse.Namespace(x=1)}, tmp_path / "netG.pth")  # not tensors and plain data
    with pytest.raises(ModelLoadError, match="cannot be opened safely"):
        preprocess("lineart_anime", Image.new("RGB", (64, 64)), 64, annotators_dir=tmp_path)


def test_softedge_hed_runs_the_network_from_the_folder(tmp_path):
    from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector

    torch.manual_seed(0)
    network = ControlNetHED_Apache2().eval()
    torch.save(network.state_dict(), tmp_path / "ControlNetHED.pth")
    rng = np.random.default_rng(4)
    image = Image.fromarray(rng.integers(0, 256, (128, 192, 3), dtype=np.uint8))
    out = preprocess("softedge_hed", image, resolution=128, annotators_dir=tmp_path)
    assert out.mode == "RGB" and out.size == (192, 128)
    # The same network called directly on the same (already 64-aligned) picture gives the same map.
    reference = HEDdetector(network)(np.asarray(image), detect_resolution=128, image_resolution=128, output_type="np")
    assert (pixels(out) == reference.astype(np.int32)).all()
    assert pixels(out).std() > 0
    assert preprocess("hed", image, resolution=100, annotators_dir=tmp_path).size == (150, 100)  # padded, cropped
