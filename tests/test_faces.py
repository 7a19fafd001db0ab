"""Face restoration (brushwork.upscale.faces): GFPGAN/RestoreFormer/CodeFormer weights from the models folder,
found and loaded through spandrel, faces pasted back with a feathered mask, visibility, the errors.

The released networks are fixed at 512x512 and 290-380 MB (a CPU forward takes 15-20 s), so the tests
build the same classes small, in the same key layout: spandrel detects GFPGAN by two key names, and
brushwork reads its sizes from the tensors (spandrel itself would build the released size only, which
`test_released_gfpgan_layout_is_spandrels` checks on shape-only tensors); RestoreFormer's sizes spandrel
reads itself. CodeFormer's encoder and generator are fixed at the released size whatever the file says,
so its one end-to-end test runs a 65M-parameter network (transformer and codebook shrunk) on one face,
about 7 s on two cores. Faces are found in drawn pictures by OpenCV's real Haar cascade.
"""

import threading

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from safetensors.torch import save_file
from spandrel.architectures.GFPGAN import GFPGAN
from spandrel.architectures.RestoreFormer import RestoreFormer
from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

from brushwork.errors import BrushworkError, ModelLoadError
from brushwork.models.store import ModelStore
from brushwork.upscale import faces
from brushwork.upscale.faces import (
    GFPGAN_RELEASED,
    FaceNetwork,
    FaceNetworkCache,
    find_face_restorer,
    gfpgan_sizes,
    haar_faces,
    list_face_restorers,
    restore_faces,
)

BOX = (96, 96, 64, 64)  # the one face the injected detector reports


def one_face(pixels):
    return [BOX]


def tiny_gfpgan(seed=0) -> dict[str, torch.Tensor]:
    """GFPGANv1Clean at 64x64, 1/32 of the channels: 55k parameters in the released key layout."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = GFPGAN(
            out_size=64, num_style_feat=16, channel_multiplier=1, decoder_load_path=None, fix_decoder=False,
            num_mlp=2, input_is_latent=True, different_w=True, narrow=1 / 32, sft_half=True,
        )
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def tiny_restoreformer(seed=0) -> dict[str, torch.Tensor]:
    """RestoreFormer with one 32-channel level and an 8-entry codebook (spandrel reads these sizes)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = RestoreFormer(
            n_embed=8, embed_dim=8, ch=32, out_ch=3, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(16,),
            dropout=0.0, in_channels=3, resolution=512, z_channels=8, double_z=False, enable_mid=False,
            head_size=8,
        )
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def small_codeformer(seed=0) -> dict[str, torch.Tensor]:
    """CodeFormer in codeformer-v0.1.0's layout with a 32-wide, one-layer transformer, a 16-entry codebook
    and one fidelity fuse (at 256 pixels), in float16 to halve the 130 MB file; the rest is the released size."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = CodeFormer(dim_embd=32, n_head=8, n_layers=1, codebook_size=16, connect_list=["256"])
    return {k: v.half().contiguous() for k, v in net.state_dict().items()}


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "models"
    (root / "GFPGAN").mkdir(parents=True)
    save_file(tiny_gfpgan(), root / "GFPGAN" / "GFPGANv1.4.safetensors")
    return root


@pytest.fixture
def picture():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))


def test_listing_as_a1111_names_them(tmp_path, models):
    assert [(r.name, r.cmd_dir, r.path) for r in list_face_restorers(None)] == [
        ("CodeFormer", None, None), ("GFPGAN", None, None)
    ]
    store = ModelStore(models)
    listed = {r.name: r for r in list_face_restorers(store)}
    assert list(listed) == ["CodeFormer", "GFPGAN"]
    assert listed["GFPGAN"].available and listed["GFPGAN"].path == (models / "GFPGAN" / "GFPGANv1.4.safetensors").resolve()
    assert listed["GFPGAN"].cmd_dir == str(models.resolve() / "GFPGAN")
    assert not listed["CodeFormer"].available and listed["CodeFormer"].cmd_dir == str(models.resolve() / "Codeformer")
    # RestoreFormer shares GFPGAN/ and is listed once its weights are there, without taking GFPGAN's place
    save_file(tiny_restoreformer(), models / "GFPGAN" / "RestoreFormer.safetensors")
    listed = {r.name: r for r in list_face_restorers(store)}
    assert list(listed) == ["CodeFormer", "GFPGAN", "RestoreFormer"]
    assert listed["GFPGAN"].path.name == "GFPGANv1.4.safetensors"
    assert listed["RestoreFormer"].path.name == "RestoreFormer.safetensors"
    assert find_face_restorer("gfpgan", store).name == "GFPGAN"  # any case


def test_missing_weights_name_the_folder_and_file(tmp_path, picture):
    store = ModelStore(tmp_path)
    with pytest.raises(ModelLoadError) as error:
        restore_faces(picture, "GFPGAN", store, detector=one_face)
    assert str(error.value) == (
        f"face restoration needs GFPGAN weights: place GFPGANv1.4.pth (or .safetensors) in {tmp_path.resolve() / 'GFPGAN'}"
    )
    codeformer = r"CodeFormer weights: place codeformer-v0\.1\.0\.pth \(or \.safetensors\) in .*Codeformer$"
    with pytest.raises(ModelLoadError, match=codeformer):
        restore_faces(picture, "CodeFormer", store, detector=one_face)
    with pytest.raises(ModelLoadError, match="GFPGAN weights: no --models-dir given"):
        restore_faces(picture, "GFPGAN", None, detector=one_face)
    with pytest.raises(ModelLoadError, match="unknown face restorer 'ESRGAN'; choose one of: CodeFormer, GFPGAN, RestoreFormer$"):
        restore_faces(picture, "ESRGAN", store)
    for bad in (-0.1, 1.5, float("nan"), "much"):
        with pytest.raises(BrushworkError, match="visibility must be between 0 and 1"):
            restore_faces(picture, "GFPGAN", store, visibility=bad)
    with pytest.raises(BrushworkError, match="codeformer_weight must be between 0 and 1"):
        restore_faces(picture, "CodeFormer", store, codeformer_weight=2)


def test_restores_the_face_and_leaves_the_rest_exact(models, picture):
    store = ModelStore(models)
    result = restore_faces(picture, "GFPGAN", store, detector=one_face)
    assert result.size == picture.size and result.mode == "RGB"
    before, after = np.asarray(picture).astype(int), np.asarray(result).astype(int)
    x, y, w, h = BOX
    assert np.abs(after - before)[y:y + h, x:x + w].mean() > 20  # the face changed
    # The crop is 1.6 box widths around the face; past it nothing may change, not by one level.
    far = np.ones(before.shape[:2], bool)
    far[70:186, 70:186] = False
    assert np.array_equal(after[far], before[far])
    changed = np.argwhere(np.any(after != before, axis=2))
    assert changed.min() >= 70 and changed.max() < 186
    # Feathered: the edge of the pasted region blends, so some changes are much smaller than the face's.
    assert 0 < np.abs(after - before)[80:84, 80:180].mean() < np.abs(after - before)[y:y + h, x:x + w].mean()
    # Deterministic: the same picture restores the same (GFPGAN's noise maps are the trained ones).
    assert np.array_equal(np.asarray(restore_faces(picture, "GFPGAN", store, detector=one_face)), after)


def test_visibility_blends_with_the_original(models, picture):
    store = ModelStore(models)
    cache = FaceNetworkCache()
    unchanged = restore_faces(picture, "GFPGAN", store, visibility=0, cache=cache, detector=one_face)
    assert np.array_equal(np.asarray(unchanged), np.asarray(picture)) and unchanged is not picture
    assert len(cache) == 0  # nothing loaded for an invisible result
    full = restore_faces(picture, "GFPGAN", store, visibility=1, cache=cache, detector=one_face)
    half = restore_faces(picture, "GFPGAN", store, visibility=0.5, cache=cache, detector=one_face)
    assert np.array_equal(np.asarray(half), np.asarray(Image.blend(picture, full, 0.5)))


def test_network_is_loaded_once_for_two_calls(models, picture, monkeypatch):
    loads = []
    real = faces.load_face_network
    monkeypatch.setattr(faces, "load_face_network", lambda *a, **k: loads.append(a) or real(*a, **k))
    store = ModelStore(models)
    cache = FaceNetworkCache()
    first = restore_faces(picture, "GFPGAN", store, cache=cache, detector=one_face)
    second = restore_faces(picture, "GFPGAN", store, cache=cache, detector=one_face)
    assert len(loads) == 1 and np.array_equal(np.asarray(first), np.asarray(second))
    # two jobs at once still load it once
    cache.clear()
    results = []

    def job():
        results.append(restore_faces(picture, "GFPGAN", store, cache=cache, detector=one_face))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 2 and len(results) == 2
    assert all(np.array_equal(np.asarray(result), np.asarray(first)) for result in results)


def test_no_face_returns_the_picture_and_loads_nothing(models, picture):
    cache = FaceNetworkCache()
    result = restore_faces(picture, "GFPGAN", ModelStore(models), cache=cache, detector=lambda pixels: [])
    assert np.array_equal(np.asarray(result), np.asarray(picture)) and len(cache) == 0


def test_transparency_is_kept(models, picture):
    rgba = picture.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(picture.size))
    result = restore_faces(rgba, "GFPGAN", ModelStore(models), detector=one_face)
    assert result.mode == "RGBA"
    assert np.array_equal(np.asarray(result.getchannel("A")), np.asarray(rgba.getchannel("A")))


def test_pickles_need_the_opt_in(tmp_path, picture):
    (tmp_path / "GFPGAN").mkdir()
    torch.save({"params_ema": tiny_gfpgan()}, tmp_path / "GFPGAN" / "GFPGANv1.4.pth")  # as GFPGAN releases it
    with pytest.raises(ModelLoadError, match="pickle checkpoint.*--allow-pickle"):
        restore_faces(picture, "GFPGAN", ModelStore(tmp_path), detector=one_face)
    from_pickle = restore_faces(picture, "GFPGAN", ModelStore(tmp_path, allow_pickle=True), detector=one_face)
    save_file(tiny_gfpgan(), tmp_path / "GFPGAN" / "GFPGANv1.4.safetensors")  # preferred over the pickle
    assert find_face_restorer("GFPGAN", ModelStore(tmp_path)).path.suffix == ".safetensors"
    from_safetensors = restore_faces(picture, "GFPGAN", ModelStore(tmp_path), detector=one_face)
    assert np.array_equal(np.asarray(from_pickle), np.asarray(from_safetensors))


def test_a_file_of_another_kind_is_refused_clearly(tmp_path, picture):
    (tmp_path / "GFPGAN").mkdir()
    save_file({"conv_first.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "GFPGAN" / "GFPGAN-esrgan.safetensors")
    with pytest.raises(ModelLoadError, match="GFPGAN-esrgan.safetensors is not a face restoration network"):
        restore_faces(picture, "GFPGAN", ModelStore(tmp_path), detector=one_face)
    state = tiny_gfpgan()
    state["final_linear.weight"] = state["final_linear.weight"][:, :64].contiguous()  # a truncated tensor
    save_file(state, tmp_path / "GFPGAN" / "GFPGANv1.4.safetensors")
    with pytest.raises(ModelLoadError, match="looks like a face network but its weights do not fit"):
        restore_faces(picture, "GFPGAN", ModelStore(tmp_path), detector=one_face)


def test_restoreformer_runs_through_spandrel(models, picture):
    save_file(tiny_restoreformer(), models / "GFPGAN" / "RestoreFormer.safetensors")
    result = restore_faces(picture, "RestoreFormer", ModelStore(models), detector=one_face)
    before, after = np.asarray(picture).astype(int), np.asarray(result).astype(int)
    assert np.abs(after - before)[96:160, 96:160].mean() > 5
    assert np.array_equal(after[:60], before[:60]) and np.array_equal(after[190:], before[190:])


def test_released_gfpgan_layout_is_spandrels():
    """A full-size GFPGANv1.4 layout (shape-only tensors, no memory) is detected as GFPGAN, and the sizes
    read from it are the ones spandrel builds, so released files load exactly as spandrel loads them."""
    with torch.device("meta"):
        released = GFPGAN(**GFPGAN_RELEASED, decoder_load_path=None, fix_decoder=False, input_is_latent=True)
    state = released.state_dict()
    assert gfpgan_sizes(state) == GFPGAN_RELEASED
    assert [a.architecture.id for a in faces._face_registry().architectures("detection") if a.detect(state)] == ["GFPGAN"]
    assert gfpgan_sizes(tiny_gfpgan())["out_size"] == 64 and gfpgan_sizes(tiny_gfpgan())["channel_multiplier"] == 1


def test_codeformer_layout_and_weight():
    with torch.device("meta"):
        state = CodeFormer().state_dict()  # codeformer-v0.1.0's layout
    assert [a.architecture.id for a in faces._face_registry().architectures("detection") if a.detect(state)] == ["CodeFormer"]

    class Recording(torch.nn.Module):  # stands in for the 376 MB network: what is it called with?
        def forward(self, x, **kwargs):
            self.called = (x.shape, float(x.min()), float(x.max()), kwargs)
            return (x,)

    descriptor = type("Descriptor", (), {"model": Recording(), "device": torch.device("cpu"), "dtype": torch.float32})()
    network = FaceNetwork(path=None, descriptor=descriptor, architecture="CodeFormer", size=8)
    face = np.full((8, 8, 3), 255, np.uint8)
    face[0, 0] = 0
    assert np.array_equal(network(face, codeformer_weight=0.3), face)  # [-1, 1] there and back
    assert descriptor.model.called == (torch.Size([1, 3, 8, 8]), -1.0, 1.0, {"weight": 0.3})


def test_codeformer_restores_through_spandrel_extra_arches(tmp_path, picture, monkeypatch):
    (tmp_path / "Codeformer").mkdir()
    save_file(small_codeformer(), tmp_path / "Codeformer" / "codeformer-v0.1.0.safetensors")
    calls = []
    real = faces.load_face_network

    def load_and_watch(*args, **kwargs):  # the real network, with what each forward is given recorded
        network = real(*args, **kwargs)
        network.descriptor.model.register_forward_pre_hook(
            lambda module, inputs, options: calls.append((inputs[0].shape, options)), with_kwargs=True
        )
        return network

    monkeypatch.setattr(faces, "load_face_network", load_and_watch)
    result = restore_faces(picture, "CodeFormer", ModelStore(tmp_path), codeformer_weight=0.3, detector=one_face)
    assert calls == [(torch.Size([1, 3, 512, 512]), {"weight": 0.3})]  # one face, at 512, with its w
    before, after = np.asarray(picture).astype(int), np.asarray(result).astype(int)
    assert np.abs(after - before)[96:160, 96:160].mean() > 5
    assert np.array_equal(after[:60], before[:60]) and np.array_equal(after[190:], before[190:])


def test_a_network_in_the_wrong_folder_is_refused(tmp_path, picture):
    (tmp_path / "Codeformer").mkdir()
    save_file(tiny_gfpgan(), tmp_path / "Codeformer" / "codeformer-v0.1.0.safetensors")
    wrong = "codeformer-v0.1.0.safetensors is a GFPGAN network, not CodeFormer: GFPGAN weights go in the GFPGAN folder"
    with pytest.raises(ModelLoadError, match=wrong):
        restore_faces(picture, "CodeFormer", ModelStore(tmp_path), detector=one_face)
    (tmp_path / "GFPGAN").mkdir()
    save_file(tiny_restoreformer(), tmp_path / "GFPGAN" / "GFPGANv1.4.safetensors")
    named = "is a RestoreFormer network, not GFPGAN: .* GFPGAN folder, with 'restoreformer' in the file name"
    with pytest.raises(ModelLoadError, match=named):
        restore_faces(picture, "GFPGAN", ModelStore(tmp_path), detector=one_face)


def drawn_face(size=256, box=(64, 48, 128, 160), features=True) -> Image.Image:
    """A drawn face (skin, eyes, brows, nose, mouth), soft enough for OpenCV's frontal-face Haar cascade
    to take for one (it does at any size and place); without features, only the skin-coloured oval."""
    image = Image.new("RGB", (size, size), (40, 60, 90))
    draw = ImageDraw.Draw(image)
    x, y, w, h = box
    draw.ellipse((x, y, x + w, y + h), fill=(225, 185, 160))
    if not features:
        return image.filter(ImageFilter.GaussianBlur(2))
    eye_y, radius = y + h * 0.40, w * 0.09
    for ex in (x + w * 0.28, x + w * 0.72):
        r = radius
        draw.ellipse((ex - r * 1.5, eye_y - r * 0.8, ex + r * 1.5, eye_y + r * 0.8), fill=(250, 250, 250))  # white
        draw.ellipse((ex - r * 0.7, eye_y - r * 0.7, ex + r * 0.7, eye_y + r * 0.7), fill=(40, 30, 30))  # iris
        draw.rectangle((ex - r * 2, eye_y - r * 2.6, ex + r * 2, eye_y - r * 1.8), fill=(70, 50, 40))  # brow
    nose = [(x + w * 0.5, y + h * 0.45), (x + w * 0.43, y + h * 0.62), (x + w * 0.57, y + h * 0.62)]
    draw.polygon(nose, fill=(200, 150, 130))
    draw.ellipse((x + w * 0.33, y + h * 0.72, x + w * 0.67, y + h * 0.8), fill=(150, 60, 60))
    return image.filter(ImageFilter.GaussianBlur(2))


def test_haar_finds_drawn_faces(models):
    image = drawn_face()
    boxes = haar_faces(np.asarray(image))
    assert len(boxes) == 1 and all(isinstance(v, int) for v in boxes[0])
    x, y, w, h = boxes[0]
    assert x < 64 + 64 < x + w and y < 48 + 80 < y + h and 100 < w < 200  # around the drawn face
    # nothing in an empty picture, in noise, or in a face-coloured oval with no eyes, nose or mouth
    assert haar_faces(np.zeros((128, 128, 3), np.uint8)) == []
    assert haar_faces(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)) == []
    assert haar_faces(np.asarray(drawn_face(features=False))) == []
    # two faces, the larger first
    pair = Image.new("RGB", (512, 256))
    pair.paste(drawn_face(box=(80, 60, 96, 120)), (0, 0))
    pair.paste(image, (256, 0))
    (big_x, _, big_w, _), (small_x, _, small_w, _) = haar_faces(np.asarray(pair))
    assert big_x > 256 > small_x + small_w and big_w > small_w
    # a picture past DETECT_SIDE is searched smaller; the box comes back in its own pixels
    (x, y, w, h), = haar_faces(np.asarray(drawn_face(2048, (512, 384, 1024, 1280))))
    assert x < 1024 < x + w and y < 384 + 640 < y + h and 800 < w < 1600
    # the default detector: the face found is restored, the picture past its crop is left exact
    wide = drawn_face(512)
    (x, y, w, h), = haar_faces(np.asarray(wide))
    restored = np.asarray(restore_faces(wide, "GFPGAN", ModelStore(models))).astype(int)
    change = np.abs(restored - np.asarray(wide)).sum(axis=2)
    assert change[y:y + h, x:x + w].mean() > 20
    right, bottom = x + w / 2 + faces.CROP_SCALE * w / 2, y + faces.CROP_CENTRE_Y * h + faces.CROP_SCALE * h / 2
    assert right < 400 and not change[:, int(right) + 2:].any() and not change[int(bottom) + 2:].any()


def test_without_haar_cascades_the_error_says_what_to_install(models, monkeypatch):
    monkeypatch.delattr(cv2, "CascadeClassifier")  # as OpenCV 5 is
    with pytest.raises(ModelLoadError, match=r'Haar cascade classifier.*"opencv-python-headless>=4.9,<5"'):
        restore_faces(drawn_face(), "GFPGAN", ModelStore(models))


def test_a_missing_cascade_file_is_named(models, tmp_path, monkeypatch):
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"haarcascade_frontalface_default\.xml, which is not in .*reinstall"):
        restore_faces(drawn_face(), "GFPGAN", ModelStore(models))


def test_the_engines_postprocess_stage_restores_faces_when_the_recipe_asks(models):
    from brushwork.engine.engine import Engine
    from brushwork.recipe import Recipe

    engine, image = Engine(ModelStore(models)), drawn_face()
    assert engine.postprocess(Recipe(), image) is image
    restored = engine.postprocess(Recipe(restore_faces="GFPGAN"), image)
    assert restored.size == image.size and not np.array_equal(np.asarray(restored), np.asarray(image))
    assert np.array_equal(np.asarray(restored), np.asarray(restore_faces(image, "GFPGAN", ModelStore(models))))
    assert len(engine._face_networks) == 1  # the engine's cache holds the network for the next picture
