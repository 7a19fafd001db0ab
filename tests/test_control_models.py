"""ControlNet and T2I-Adapter files in every layout users have -> diffusers networks equal to the ones written.

All models are the tiny ones from `tiny_controls`; nothing reaches for a model hub.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, T2IAdapter
from safetensors.torch import load_file, save_file

from brushwork.errors import BrushworkError, ModelLoadError
from brushwork.models.control import ControlModel, check_family, load_control_model
from tiny_controls import LAYOUTS, write_tiny_adapter, write_tiny_controlnet
from tiny_models import BIG_G_PROJECTION, tiny_components

FAMILIES = ("sd1", "sd2", "sdxl")
CONTEXT = {"sd1": 32, "sd2": 64, "sdxl": 96}  # the tiny text encoders' widths (SDXL: both side by side)


def _path(folder: Path, layout: str, stem: str = "control_tiny") -> Path:
    return folder / (stem if layout == "folder" else f"{stem}.safetensors")


def _load(path: Path, **kwargs) -> ControlModel:
    return load_control_model(path, device="cpu", dtype=torch.float32, **kwargs)


def _controlnet_inputs(family: str) -> dict:
    generator = torch.Generator().manual_seed(7)
    inputs = {
        "sample": torch.randn(2, 4, 8, 8, generator=generator),
        "timestep": torch.tensor([999, 500]),
        "encoder_hidden_states": torch.randn(2, 5, CONTEXT[family], generator=generator),
        "controlnet_cond": torch.rand(2, 3, 16, 16, generator=generator),
        "return_dict": False,
    }
    if family == "sdxl":
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, BIG_G_PROJECTION, generator=generator),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2),
        }
    return inputs


@torch.no_grad()
def _residuals(controlnet: torch.nn.Module, family: str) -> list[torch.Tensor]:
    down, mid = controlnet(**_controlnet_inputs(family))
    return [*down, mid]


def _assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    want, got = expected.state_dict(), actual.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


# --- ControlNet ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_controlnet_loads_equal_to_the_one_written(tmp_path: Path, family: str, layout: str) -> None:
    path = _path(tmp_path, layout)
    written = write_tiny_controlnet(path, family=family, layout=layout)

    model = _load(path)

    assert (model.name, model.kind, model.family) == ("control_tiny", "controlnet", family)
    assert isinstance(model.network, ControlNetModel)
    assert not model.network.training
    assert not any(p.requires_grad for p in model.network.parameters())
    _assert_same_weights(written, model.network)
    want, got = _residuals(written, family), _residuals(model.network, family)
    assert len(want) == len(got) == 5  # conv_in + 2 per level (1 ResBlock, 1 Downsample on the first) + mid
    assert all(torch.equal(w, g) for w, g in zip(want, got, strict=True))
    assert all(g.abs().sum() > 0 for g in got)  # the zero convolutions are nudged, so control reaches the U-Net


def test_controlnet_without_prefix_and_with_its_sd_model(tmp_path: Path) -> None:
    """ControlNet v1.0 files hold the whole SD model beside `control_model.*`; extracted ones drop the prefix."""
    written = write_tiny_controlnet(tmp_path / "full.safetensors", layout="original")
    state = load_file(tmp_path / "full.safetensors")
    save_file({**state, "model.diffusion_model.out.2.weight": torch.ones(4, 32, 3, 3)}, tmp_path / "full.safetensors")
    save_file({k.removeprefix("control_model."): v for k, v in state.items()}, tmp_path / "bare.safetensors")

    for name in ("full", "bare"):
        model = _load(tmp_path / f"{name}.safetensors")
        assert model.name == name
        _assert_same_weights(written, model.network)


def test_controlnet_fits_the_tiny_unet(tmp_path: Path) -> None:
    for family in FAMILIES:
        write_tiny_controlnet(tmp_path / f"{family}.safetensors", family=family)
        model = _load(tmp_path / f"{family}.safetensors")
        inputs = _controlnet_inputs(family)
        with torch.no_grad():
            *down, mid = _residuals(model.network, family)
            out = tiny_components(family).unet(
                inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
                added_cond_kwargs=inputs.get("added_cond_kwargs"), down_block_additional_residuals=down,
                mid_block_additional_residual=mid, return_dict=False,
            )[0]
        assert out.shape == inputs["sample"].shape


def test_shuffle_yaml_turns_on_global_pooling(tmp_path: Path) -> None:
    path = tmp_path / "control_v11e_sd15_shuffle.safetensors"
    write_tiny_controlnet(path)
    assert not _load(path).network.config.global_pool_conditions
    path.with_suffix(".yaml").write_text(
        "model:\n  params:\n    control_stage_config:\n      params:\n        global_average_pooling: true\n"
    )
    assert _load(path).network.config.global_pool_conditions


def test_difference_controlnet_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "control_any3_openpose.safetensors"
    write_tiny_controlnet(path)
    save_file({**load_file(path), "difference": torch.zeros(1)}, path)
    with pytest.raises(ModelLoadError, match="difference"):
        _load(path)


def test_dtype_is_the_one_asked(tmp_path: Path) -> None:
    write_tiny_controlnet(tmp_path / "c.safetensors")
    write_tiny_adapter(tmp_path / "a.safetensors")
    for name in ("c", "a"):
        network = load_control_model(tmp_path / f"{name}.safetensors", device="cpu", dtype=torch.bfloat16).network
        assert {p.dtype for p in network.parameters()} == {torch.bfloat16}


# --- T2I-Adapter --------------------------------------------------------------------------------------------

ADAPTER_CASES = [  # (adapter_type, layout, family, picture channels, picture side)
    ("full_adapter", "original", "sd1", 3, 16),
    ("full_adapter", "diffusers", "sd1", 3, 16),
    ("full_adapter", "folder", "sd1", 3, 16),
    ("light_adapter", "original", "sd1", 3, 16),
    ("light_adapter", "diffusers", "sd1", 3, 16),
    ("full_adapter_xl", "original", "sdxl", 1, 64),
    ("full_adapter_xl", "diffusers", "sdxl", 1, 64),
]


@pytest.mark.parametrize(("adapter_type", "layout", "family", "channels", "side"), ADAPTER_CASES)
def test_adapter_loads_equal_to_the_one_written(
    tmp_path: Path, adapter_type: str, layout: str, family: str, channels: int, side: int
) -> None:
    path = _path(tmp_path, layout, "t2iadapter_tiny")
    written = write_tiny_adapter(path, layout=layout, adapter_type=adapter_type)

    model = _load(path)

    assert (model.name, model.kind, model.family) == ("t2iadapter_tiny", "t2i_adapter", family)
    assert isinstance(model.network, T2IAdapter)
    assert model.network.config.adapter_type == adapter_type
    assert not model.network.training and not any(p.requires_grad for p in model.network.parameters())
    _assert_same_weights(written, model.network)
    picture = torch.rand(2, channels, side, side, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = written(picture), model.network(picture)
    assert all(torch.equal(w, g) for w, g in zip(want, got, strict=True))


def test_adapter_fits_the_tiny_unet(tmp_path: Path) -> None:
    write_tiny_adapter(tmp_path / "a.safetensors")
    adapter = _load(tmp_path / "a.safetensors").network
    inputs = _controlnet_inputs("sd1")
    with torch.no_grad():
        features = adapter(inputs["controlnet_cond"])
        out = tiny_components("sd1").unet(
            inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
            down_intrablock_additional_residuals=features, return_dict=False,
        )[0]
    assert out.shape == inputs["sample"].shape


def test_pickle_needs_allow_pickle(tmp_path: Path) -> None:
    path = tmp_path / "t2iadapter_canny_tiny.pth"
    written = write_tiny_adapter(path, layout="original")
    with pytest.raises(ModelLoadError, match="allow-pickle"):
        _load(path)
    _assert_same_weights(written, _load(path, allow_pickle=True).network)

    folder = tmp_path / "pickled_folder"
    write_tiny_controlnet(folder, layout="folder").save_pretrained(str(folder), safe_serialization=False)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="allow-pickle"):
        _load(folder)
    assert _load(folder, allow_pickle=True).kind == "controlnet"


# --- errors -------------------------------------------------------------------------------------------------


def test_unknown_tensors_name_the_file_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "mystery.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(2), "head.bias": torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError, match=r"mystery\.safetensors.*encoder\.layer\.0\.weight"):
        _load(path)


def test_unknown_tensors_inside_a_known_layout(tmp_path: Path) -> None:
    path = tmp_path / "odd_adapter.safetensors"
    write_tiny_adapter(path, layout="original")
    save_file({**load_file(path), "body.0.skep.weight": torch.zeros(32, 32, 1, 1)}, path)
    with pytest.raises(ModelLoadError, match=r"odd_adapter\.safetensors.*body\.0\.skep\.weight"):
        _load(path)


def test_incomplete_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "control_cut.safetensors"
    write_tiny_controlnet(path, layout="diffusers")
    save_file({k: v for k, v in load_file(path).items() if k != "down_blocks.1.resnets.0.conv2.weight"}, path)
    with pytest.raises(ModelLoadError, match=r"control_cut\.safetensors.*down_blocks\.1\.resnets\.0\.conv2"):
        _load(path)


def test_check_family_names_both_models(tmp_path: Path) -> None:
    write_tiny_controlnet(tmp_path / "control_tiny_sd15.safetensors")
    model = _load(tmp_path / "control_tiny_sd15.safetensors")
    check_family(model, "sd1", "tiny-sd1")
    with pytest.raises(BrushworkError) as caught:
        check_family(model, "sdxl", "tiny-xl")
    message = str(caught.value)
    assert all(part in message for part in ("control_tiny_sd15", "SD 1.x", "tiny-xl", "SDXL"))
