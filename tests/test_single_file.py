"""Single-file checkpoints and diffusers folders -> Components, and Components -> single file.

All models are the tiny ones from `tiny_models`; nothing reaches for a model hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import accelerate
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from safetensors.torch import load_file, save_file

from brushwork.errors import ModelLoadError
from brushwork.models.components import Components
from brushwork.models.detect import detect
from brushwork.models.diffusers_folder import load_diffusers_folder
from brushwork.models.single_file import (
    _load_text_encoder,
    _load_unet,
    _load_vae,
    load_single_file,
    read_state_dict,
    save_single_file,
    to_ldm_state_dict,
)
from tiny_models import NATIVE_SIZE, VARIANTS, parse_variant, tiny_components, to_pipeline, write_tiny_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EXPECTED = {  # variant: (family, inpaint, prediction_type)
    "sd1": ("sd1", False, "epsilon"),
    "sd2": ("sd2", False, "epsilon"),
    "sd2-v": ("sd2", False, "v_prediction"),
    "sdxl": ("sdxl", False, "epsilon"),
    "sd1-inpaint": ("sd1", True, "epsilon"),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; with more, a busy CI box turns 3 ms forwards into seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Components]]:
    """Each tiny variant written once as a .safetensors file, with the components written."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return {v: (folder / f"{v}.safetensors", write_tiny_checkpoint(v, folder / f"{v}.safetensors")) for v in VARIANTS}


def assert_same_weights(expected: list[torch.nn.Module], actual: list[torch.nn.Module]) -> None:
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        want_sd, got_sd = want.state_dict(), got.state_dict()
        assert want_sd.keys() == got_sd.keys(), set(want_sd) ^ set(got_sd)
        different = [k for k in want_sd if not torch.equal(want_sd[k], got_sd[k])]
        assert not different, different[:5]


def strip_metadata(path: Path, target: Path) -> Path:
    save_file(load_file(str(path)), str(target))
    return target


# --- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_keeps_every_weight_and_detects_the_model(variant, checkpoints):
    path, written = checkpoints[variant]
    loaded = load_single_file(path)
    family, inpaint, prediction_type = EXPECTED[variant]
    assert (loaded.family, loaded.inpaint, loaded.prediction_type) == (family, inpaint, prediction_type)
    assert loaded.native_size == NATIVE_SIZE  # stored as modelspec.resolution by the writer
    assert_same_weights(written.modules(), loaded.modules())
    assert all(not m.training for m in loaded.modules())
    assert len(loaded.tokenizers) == len(loaded.text_encoders) == (2 if family == "sdxl" else 1)
    # Same weights, same architecture: the U-Net computes exactly the same thing.
    args, kwargs = _unet_inputs(loaded)
    with torch.no_grad():
        assert torch.equal(written.unet(*args, **kwargs).sample, loaded.unet(*args, **kwargs).sample)


def _unet_inputs(c: Components) -> tuple[tuple, dict]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, c.unet.config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 5, c.unet.config.cross_attention_dim, generator=generator)
    kwargs = {}
    if c.family == "sdxl":
        pooled = c.text_encoders[1].config.projection_dim
        text_embeds = torch.randn(1, pooled, generator=generator)
        kwargs["added_cond_kwargs"] = {"text_embeds": text_embeds, "time_ids": torch.ones(1, 6)}
    return (x, torch.tensor([500]), context), kwargs


@pytest.mark.parametrize(
    ("variant", "prediction_type", "native_size"),
    [("sd1", "epsilon", 512), ("sd2", "epsilon", 512), ("sd2-v", "v_prediction", 768), ("sdxl", "epsilon", 1024)],
)
def test_without_metadata_family_rules_and_the_v_probe_decide(
    variant, prediction_type, native_size, checkpoints, tmp_path
):
    bare = strip_metadata(checkpoints[variant][0], tmp_path / "bare.safetensors")
    loaded = load_single_file(bare)
    assert (loaded.prediction_type, loaded.native_size) == (prediction_type, native_size)
    assert loaded.unet.config.upcast_attention == (prediction_type == "v_prediction")


def test_text_encoders_give_the_same_features(checkpoints):
    path, written = checkpoints["sdxl"]
    loaded = load_single_file(path)
    for tokenizer, want, got in zip(loaded.tokenizers, written.text_encoders, loaded.text_encoders):
        ids = tokenizer("a lighthouse", padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            want_out, got_out = want(ids, output_hidden_states=True), got(ids, output_hidden_states=True)
        assert torch.equal(want_out.hidden_states[-2], got_out.hidden_states[-2])  # SDXL reads the penultimate
        assert torch.equal(want_out[0], got_out[0])
    assert loaded.tokenizers[1].pad_token == "!"  # OpenCLIP pads with "!", CLIP with end-of-text
    assert loaded.tokenizers[0].pad_token == "<|endoftext|>"


def test_writer_uses_the_original_key_names():
    keys = to_ldm_state_dict(tiny_components("sd2"))
    shapes = {k: tuple(v.shape) for k, v in keys.items()}
    assert shapes["model.diffusion_model.input_blocks.0.0.weight"] == (32, 4, 3, 3)
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in shapes
    assert "model.diffusion_model.input_blocks.2.0.op.weight" in shapes  # level 0's downsampler
    assert "model.diffusion_model.output_blocks.1.1.conv.weight" in shapes  # level 0's upsampler (no attention)
    assert "model.diffusion_model.output_blocks.3.0.skip_connection.weight" in shapes
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (64, 64, 1, 1)  # 1x1 convs in ldm
    assert "first_stage_model.decoder.up.1.upsample.conv.weight" in shapes  # decoder levels count backwards
    assert shapes["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] == (3 * 64, 64)
    # SD 2 files carry one block more than the model runs (it reads the penultimate one) and a projection.
    assert "cond_stage_model.model.transformer.resblocks.2.ln_1.weight" in shapes
    assert shapes["cond_stage_model.model.text_projection"] == (64, 64)

    xl = {k: tuple(v.shape) for k, v in to_ldm_state_dict(tiny_components("sdxl")).items()}
    assert xl["conditioner.embedders.1.model.text_projection"] == (64, 48)  # (width, projection), x @ P
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in xl
    assert "model.diffusion_model.label_emb.0.0.weight" in xl


def test_detect_rebuilds_the_ldm_config(checkpoints):
    detection = detect(read_state_dict(checkpoints["sdxl"][0]))
    unet = detection.unet_params
    assert detection.family == "sdxl" and not detection.inpaint
    assert unet["model_channels"] == 32 and unet["channel_mult"] == [1, 2] and unet["num_res_blocks"] == 1
    assert unet["attention_resolutions"] == [2] and unet["transformer_depth"] == 2
    assert unet["context_dim"] == 96 and unet["use_linear_in_transformer"] is True
    assert unet["num_head_channels"] == 32  # the first level's width, as it is under 64
    assert unet["adm_in_channels"] == 48 + 6 * 8
    assert detection.ddconfig["ch"] == 32 and detection.ddconfig["ch_mult"] == [1, 2]
    assert detection.original_config["model"]["params"]["scale_factor"] == 0.13025
    assert [te.kind for te in detection.text_encoders] == ["clip", "open_clip"]
    assert detection.text_encoders[1].config["projection_dim"] == 48

    sd1 = detect(read_state_dict(checkpoints["sd1"][0]))
    assert sd1.unet_params["num_heads"] == 8 and sd1.unet_params["use_linear_in_transformer"] is False


def test_saves_and_loads_half_precision(checkpoints, tmp_path):
    written = checkpoints["sd1"][1]
    path = tmp_path / "half.safetensors"
    save_single_file(written, path, dtype=torch.float16, metadata={"modelspec.title": "tiny"})
    assert all(t.dtype == torch.float16 for t in load_file(str(path)).values())
    loaded = load_single_file(path, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for m in loaded.modules() for p in m.parameters())
    want = written.unet.state_dict()["conv_in.weight"].half()
    assert torch.equal(loaded.unet.state_dict()["conv_in.weight"], want)


def test_left_over_keys_are_reported_and_v_pred_marker_is_read(checkpoints, tmp_path):
    state_dict = load_file(str(checkpoints["sdxl"][0]))
    state_dict["model_ema.decay"] = torch.tensor(0.999)
    state_dict["alphas_cumprod"] = torch.ones(1000)
    state_dict["v_pred"] = torch.tensor([])  # ComfyUI's v-prediction marker
    path = tmp_path / "vpred.safetensors"
    save_file(state_dict, str(path))
    loaded = load_single_file(path)
    assert loaded.prediction_type == "v_prediction"
    assert loaded.extras["leftover_keys"] == ["alphas_cumprod", "model_ema.decay"]


# --- agreement with diffusers' own single-file loader -------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_diffusers_from_single_file_reads_our_files_the_same(variant, checkpoints, tmp_path):
    """diffusers' `from_single_file` (its ldm -> diffusers converters, its key sniffing) reads what
    our writer wrote into the same weights our loader gives: the layout is the genuine one."""
    path, written = checkpoints[variant]
    pipeline_cls = type(to_pipeline(written))
    to_pipeline(written).save_pretrained(str(tmp_path))  # only the configs are used, locally
    pipe = pipeline_cls.from_single_file(str(path), config=str(tmp_path), local_files_only=True)
    theirs = [pipe.unet, pipe.vae, pipe.text_encoder] + ([pipe.text_encoder_2] if variant == "sdxl" else [])
    assert_same_weights(load_single_file(path).modules(), theirs)


@pytest.mark.parametrize("variant", ["sd1", "sd2-v", "sdxl", "sd1-inpaint"])
def test_diffusers_folder_loads(variant, tmp_path):
    written = tiny_components(variant)
    to_pipeline(written).save_pretrained(str(tmp_path))
    loaded = load_diffusers_folder(tmp_path)
    family, inpaint, prediction_type = EXPECTED[variant]
    assert (loaded.family, loaded.inpaint, loaded.prediction_type) == (family, inpaint, prediction_type)
    assert loaded.native_size == NATIVE_SIZE  # sample_size x the VAE's downscaling
    assert_same_weights(written.modules(), loaded.modules())
    assert len(loaded.tokenizers) == len(loaded.text_encoders)
    assert loaded.scheduler_config["beta_schedule"] == "scaled_linear"
    assert "use_karras_sigmas" not in loaded.scheduler_config  # sampler settings stay with the sampler


def test_diffusers_folder_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_diffusers_folder(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_diffusers_folder(tmp_path)


# --- the A1111 sibling yaml ---------------------------------------------------------------------------


def test_sibling_yaml_overrides_what_was_inferred(tmp_path):
    yaml_config = {
        "model": {
            "params": {
                "parameterization": "v",
                "scale_factor": 0.5,
                "linear_end": 0.0125,
                "unet_config": {"params": {"num_heads": 4, "use_checkpoint": True}},
            }
        }
    }
    path = tmp_path / "model.safetensors"
    written = write_tiny_checkpoint("sd1", path, yaml_config=yaml_config)
    loaded = load_single_file(path)
    assert loaded.prediction_type == "v_prediction"  # the yaml wins over the file's metadata
    assert loaded.vae.config.scaling_factor == 0.5
    assert loaded.scheduler_config["beta_end"] == 0.0125
    assert loaded.unet.config.attention_head_dim == 4
    assert_same_weights(written.modules(), loaded.modules())


def test_saving_keeps_a_models_own_scaling_and_schedule(tmp_path):
    """A checkpoint loaded with its yaml (the embedded model, say) and saved again - fine-tuned, merged - keeps
    that yaml's latent scaling and noise schedule; one with the usual ones gets no yaml, and loses a stale one."""
    source = tmp_path / "own.safetensors"
    write_tiny_checkpoint("sd1", source, yaml_config={"model": {"params": {"scale_factor": 0.5, "linear_end": 0.03,
                                                                            "parameterization": "v"}}})
    again = tmp_path / "again.safetensors"
    save_single_file(load_single_file(source), again)
    reloaded = load_single_file(again)
    assert reloaded.vae.config.scaling_factor == 0.5
    assert reloaded.scheduler_config["beta_end"] == 0.03
    assert reloaded.prediction_type == "v_prediction"

    plain = tmp_path / "plain.safetensors"
    write_tiny_checkpoint("sd1", plain)
    plain.with_suffix(".yaml").write_text("model: {params: {scale_factor: 0.5}}", encoding="utf-8")
    save_single_file(tiny_components("sd1"), plain)
    assert not plain.with_suffix(".yaml").exists()
    assert load_single_file(plain).vae.config.scaling_factor == 0.18215


def test_sdxl_yaml_network_config_and_head_rule(tmp_path):
    path = tmp_path / "xl.safetensors"
    sgm_yaml = {"model": {"params": {"network_config": {"params": {"num_head_channels": 16}}}}}
    write_tiny_checkpoint("sdxl", path, yaml_config=sgm_yaml)
    assert load_single_file(path).unet.config.attention_head_dim == [2, 4]  # 32 // 16, 64 // 16


# --- errors -------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_single_file(tmp_path / "absent.safetensors")


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_single_file(path)


def test_truncated_safetensors(checkpoints, tmp_path):
    data = checkpoints["sd1"][0].read_bytes()
    path = tmp_path / "short.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_single_file(path)


def test_ckpt_needs_allow_pickle(checkpoints, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(checkpoints["sd1"][0])), "global_step": 1}, path)
    with pytest.raises(ModelLoadError, match="--allow-pickle") as error:
        load_single_file(path)
    assert ".safetensors" in str(error.value)
    loaded = load_single_file(path, allow_pickle=True)
    assert_same_weights(checkpoints["sd1"][1].modules(), loaded.modules())
    assert loaded.native_size == 512  # no metadata in a .ckpt: the family's size


class NotATensor:
    pass


def test_ckpt_is_opened_weights_only(tmp_path):
    path = tmp_path / "sneaky.ckpt"
    torch.save({"state_dict": {}, "payload": NotATensor()}, path)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_single_file(path, allow_pickle=True)


def test_vae_only_file_is_not_a_checkpoint(checkpoints, tmp_path):
    vae_keys = {k: v for k, v in load_file(str(checkpoints["sd1"][0])).items() if k.startswith("first_stage_model.")}
    path = tmp_path / "vae.safetensors"
    save_file(vae_keys, str(path))
    with pytest.raises(ModelLoadError, match=r"not a Stable Diffusion checkpoint.*LoRA or VAE"):
        load_single_file(path)


def test_unet_without_text_encoder_is_refused(checkpoints, tmp_path):
    keys = {k: v for k, v in load_file(str(checkpoints["sd1"][0])).items() if not k.startswith("cond_stage_model.")}
    path = tmp_path / "no-te.safetensors"
    save_file(keys, str(path))
    with pytest.raises(ModelLoadError, match="no text encoder"):
        load_single_file(path)


def test_parse_variant():
    assert parse_variant("sd2-v") == ("sd2", True, False)
    assert parse_variant("sd1-inpaint") == ("sd1", False, True)
    with pytest.raises(ValueError):
        parse_variant("sd3")


def test_yaml_that_does_not_fit_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    wrong = {"model": {"params": {"unet_config": {"params": {"context_dim": 768}}}}}
    write_tiny_checkpoint("sd1", path, yaml_config=wrong)
    with pytest.raises(ModelLoadError, match="does not match"):
        load_single_file(path)


# --- the published architectures, at full size on the meta device (no memory, no download) ------------

_SD_UNET = {
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
PUBLISHED = {  # diffusers' configs of SD 1.5, SD 2.1 (768-v) and SDXL base 1.0, the parts that matter
    "sd1": {"unet": {**_SD_UNET, "attention_head_dim": 8, "cross_attention_dim": 768}, "text": [(768, 12, 12, 3072)]},
    "sd2": {
        "unet": {
            **_SD_UNET,
            "attention_head_dim": [5, 10, 20, 20],
            "cross_attention_dim": 1024,
            "use_linear_projection": True,
        },
        "text": [(1024, 23, 16, 4096)],
    },
    "sdxl": {
        "unet": {
            "block_out_channels": (320, 640, 1280),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": [1, 2, 10],
            "attention_head_dim": [5, 10, 20],
            "cross_attention_dim": 2048,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
        },
        "text": [(768, 12, 12, 3072), (1280, 32, 20, 5120)],
    },
}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_published_architectures_are_detected_exactly(family):
    spec = PUBLISHED[family]
    with accelerate.init_empty_weights():
        unet = UNet2DConditionModel(layers_per_block=2, **spec["unet"])
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        )
        encoders = []
        for i, (hidden, layers, heads, intermediate) in enumerate(spec["text"]):
            open_clip = family == "sd2" or i == 1
            config = CLIPTextConfig(
                hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate,
                hidden_act="gelu" if open_clip else "quick_gelu", projection_dim=hidden,
            )
            with_projection = family == "sdxl" and i == 1
            encoders.append(CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config))
    original = Components(family, unet, vae, encoders, [], {}, 512)
    state_dict = to_ldm_state_dict(original)
    detection = detect(state_dict)
    assert detection.family == family

    loaded = [_load_vae(state_dict, detection, torch.float16, "meta")]
    loaded += [_load_text_encoder(state_dict, te, torch.float16, "meta") for te in detection.text_encoders]
    loaded.insert(0, _load_unet(state_dict, detection, torch.float16, "meta"))
    assert not state_dict  # every key was taken by some component
    for want, got in zip(original.modules(), loaded):
        want_shapes = {k: v.shape for k, v in want.state_dict().items()}
        assert want_shapes == {k: v.shape for k, v in got.state_dict().items()}
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    for key, value in spec["unet"].items():
        assert as_list(loaded[0].config[key]) == as_list(value), key
    for want, got in zip(encoders, loaded[2:]):
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act"):
            assert getattr(got.config, key) == getattr(want.config, key), key
