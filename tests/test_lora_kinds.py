"""Each LoRA kind and key layout people share, against its formula written out here; and the clear refusals.

Formulas (r: rank, α: alpha, m: multiplier, W: the base weight):
    LoHa      W + m · (w1a·w1b) ⊙ (w2a·w2b) · α/r
    LoKr      W + m · (w1 ⊗ (w2a·w2b)) · α/r           (w1 whole; r from w2b)
    full      W + m · diff,  b + m · diff_b
    Tucker    LoCon with a core: up[p,i] · mid[i,j,k,l] · down[j,q], summed over i, j
    DoRA      W + m · ((W + ΔW) · magnitude / ‖W + ΔW‖_columns − W)          (kohya/LyCORIS dora_scale, ComfyUI's m)
    peft DoRA magnitude · (W + m·ΔW) / ‖W + m·ΔW‖_rows                       (lora_magnitude_vector)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from brushwork.errors import ModelLoadError
from brushwork.models.patches.lora import LoraPatch, load_lora
from tiny_models import tiny_components

ATTENTION = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # a Linear of the tiny SD 1.x U-Net
CONV = "down_blocks.0.resnets.0.conv1"  # a 3x3 Conv2d
KOHYA_ATTENTION = "lora_unet_" + ATTENTION.replace(".", "_")
KOHYA_CONV = "lora_unet_" + CONV.replace(".", "_")


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


def patched(components, state: dict[str, torch.Tensor], tmp_path: Path, multiplier: float = 0.8,
            name: str = ATTENTION, part: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """(the parameter before, the parameter while the file is applied at `multiplier`)."""
    path = tmp_path / "file.safetensors"
    save_file(state, path)
    lora = load_lora(path, components)
    parameter = components.patcher.parameter("unet", f"{name}.{part}")
    before = parameter.detach().clone()
    with components.patcher.applied([LoraPatch(lora, multiplier, multiplier)]):
        during = parameter.detach().clone()
    assert torch.equal(parameter, before)
    return before, during


def test_loha(tmp_path):
    components = tiny_components("sd1")
    out, inp = components.patcher.parameter("unet", ATTENTION + ".weight").shape
    w1a, w1b, w2a, w2b = randn(out, 4, seed=1), randn(4, inp, seed=2), randn(out, 4, seed=3), randn(4, inp, seed=4)
    state = {f"{KOHYA_ATTENTION}.hada_w1_a": w1a, f"{KOHYA_ATTENTION}.hada_w1_b": w1b,
             f"{KOHYA_ATTENTION}.hada_w2_a": w2a, f"{KOHYA_ATTENTION}.hada_w2_b": w2b,
             f"{KOHYA_ATTENTION}.alpha": torch.tensor(2.0)}
    before, during = patched(components, state, tmp_path)
    assert torch.allclose(during, before + 0.8 * (w1a @ w1b) * (w2a @ w2b) * (2.0 / 4), atol=1e-7)


def test_loha_with_tucker_cores_on_a_conv(tmp_path):
    components = tiny_components("sd1")
    out, inp, kh, kw = components.patcher.parameter("unet", CONV + ".weight").shape
    t1, t2 = randn(2, 2, kh, kw, seed=1), randn(2, 2, kh, kw, seed=2)
    w1a, w1b, w2a, w2b = randn(2, out, seed=3), randn(2, inp, seed=4), randn(2, out, seed=5), randn(2, inp, seed=6)
    state = {f"{KOHYA_CONV}.hada_t1": t1, f"{KOHYA_CONV}.hada_t2": t2, f"{KOHYA_CONV}.hada_w1_a": w1a,
             f"{KOHYA_CONV}.hada_w1_b": w1b, f"{KOHYA_CONV}.hada_w2_a": w2a, f"{KOHYA_CONV}.hada_w2_b": w2b}
    before, during = patched(components, state, tmp_path, 1.0, CONV)

    def rebuild(core, a, b):  # LyCORIS stores a as [r, out] with a core
        full = torch.zeros(out, inp, kh, kw)
        for p in range(out):
            for q in range(inp):
                full[p, q] = sum(a[i, p] * core[i, j] * b[j, q] for i in range(2) for j in range(2))
        return full

    assert torch.allclose(during, before + rebuild(t1, w1a, w1b) * rebuild(t2, w2a, w2b), atol=1e-6)


def test_lokr(tmp_path):
    components = tiny_components("sd1")
    out, inp = components.patcher.parameter("unet", ATTENTION + ".weight").shape
    w1 = randn(4, 4, seed=1)
    w2a, w2b = randn(out // 4, 2, seed=2), randn(2, inp // 4, seed=3)
    state = {f"{KOHYA_ATTENTION}.lokr_w1": w1, f"{KOHYA_ATTENTION}.lokr_w2_a": w2a,
             f"{KOHYA_ATTENTION}.lokr_w2_b": w2b, f"{KOHYA_ATTENTION}.alpha": torch.tensor(1.0)}
    before, during = patched(components, state, tmp_path, 0.5)
    assert torch.allclose(during, before + 0.5 * torch.kron(w1, w2a @ w2b) * (1.0 / 2), atol=1e-7)


def test_lokr_on_a_conv_with_whole_factors_has_scale_one(tmp_path):
    components = tiny_components("sd1")
    out, inp, kh, kw = components.patcher.parameter("unet", CONV + ".weight").shape
    w1, w2 = randn(2, 2, seed=1), randn(out // 2, inp // 2, kh, kw, seed=2)
    state = {f"{KOHYA_CONV}.lokr_w1": w1, f"{KOHYA_CONV}.lokr_w2": w2, f"{KOHYA_CONV}.alpha": torch.tensor(8.0)}
    before, during = patched(components, state, tmp_path, 1.0, CONV)
    assert torch.allclose(during, before + torch.kron(w1[:, :, None, None], w2), atol=1e-7)


def test_full_diff_with_bias(tmp_path):
    components = tiny_components("sd1")
    weight = components.patcher.parameter("unet", CONV + ".weight")
    diff, diff_b = randn(*weight.shape, seed=1), randn(weight.shape[0], seed=2)
    state = {f"{KOHYA_CONV}.diff": diff, f"{KOHYA_CONV}.diff_b": diff_b}
    before, during = patched(components, state, tmp_path, 0.5, CONV)
    assert torch.allclose(during, before + 0.5 * diff, atol=1e-7)
    bias_before, bias_during = patched(components, state, tmp_path, 0.5, CONV, "bias")
    assert torch.allclose(bias_during, bias_before + 0.5 * diff_b, atol=1e-7)


def test_locon_with_a_tucker_core(tmp_path):
    components = tiny_components("sd1")
    out, inp, kh, kw = components.patcher.parameter("unet", CONV + ".weight").shape
    down, mid, up = randn(3, inp, 1, 1, seed=1), randn(3, 3, kh, kw, seed=2), randn(out, 3, 1, 1, seed=3)
    state = {f"{KOHYA_CONV}.lora_down.weight": down, f"{KOHYA_CONV}.lora_mid.weight": mid,
             f"{KOHYA_CONV}.lora_up.weight": up, f"{KOHYA_CONV}.alpha": torch.tensor(3.0)}
    before, during = patched(components, state, tmp_path, 1.0, CONV)
    # The merged layer computes what the three convolutions in a row (1x1 down, kxk core, 1x1 up) add.
    x = randn(1, inp, 8, 8, seed=4)
    conv = torch.nn.functional.conv2d
    in_a_row = conv(conv(conv(x, down), mid, padding=1), up) * (3.0 / 3)
    assert torch.allclose(conv(x, during - before, padding=1), in_a_row, atol=1e-6)


def test_dora_scale_rescales_the_merged_columns(tmp_path):
    components = tiny_components("sd1")
    out, inp = components.patcher.parameter("unet", ATTENTION + ".weight").shape
    down, up, magnitude = randn(4, inp, seed=1), randn(out, 4, seed=2), randn(1, inp, seed=3).abs() + 0.5
    state = {f"{KOHYA_ATTENTION}.lora_down.weight": down, f"{KOHYA_ATTENTION}.lora_up.weight": up,
             f"{KOHYA_ATTENTION}.dora_scale": magnitude}
    before, during = patched(components, state, tmp_path, 0.6)
    full = before + up @ down
    decomposed = full * magnitude / (full.norm(dim=0, keepdim=True) + 1e-6)
    assert torch.allclose(during, before + 0.6 * (decomposed - before), atol=1e-6)
    _, whole = patched(components, state, tmp_path, 1.0)
    assert torch.allclose(whole.norm(dim=0, keepdim=True), magnitude, atol=1e-4)  # m = 1: the stored magnitudes
    _, none = patched(components, state, tmp_path, 0.0)
    assert torch.equal(none, before)  # m = 0: the base weight


@pytest.mark.parametrize("layer", [ATTENTION, CONV])
def test_peft_dora_magnitudes_scale_output_rows(tmp_path, layer):
    """peft keeps a Linear's magnitudes as [out] and a conv's as [1, out, 1, 1]; both scale output rows."""
    components = tiny_components("sd1")
    shape = components.patcher.parameter("unet", layer + ".weight").shape
    out, inp, kernel = shape[0], shape[1], tuple(shape[2:])
    down, up = randn(2, inp, *kernel, seed=1), randn(out, 2, *([1] * len(kernel)), seed=2)
    magnitude = randn(out, seed=3).abs() + 0.5
    stored = magnitude if not kernel else magnitude.reshape(1, out, 1, 1)
    state = {f"unet.{layer}.lora_A.weight": down, f"unet.{layer}.lora_B.weight": up,
             f"unet.{layer}.lora_magnitude_vector": stored}
    before, during = patched(components, state, tmp_path, 0.5, layer)
    merged = before + 0.5 * (up.flatten(1) @ down.flatten(1)).reshape(shape)
    rows = merged.reshape(out, -1).norm(dim=1).reshape(out, *([1] * (len(shape) - 1)))
    assert torch.allclose(during, merged * magnitude.reshape(rows.shape) / (rows + 1e-6), atol=1e-6)


@pytest.mark.parametrize("layout", ["peft", "diffusers-old"])
def test_peft_and_older_diffusers_layouts_equal_kohya(tmp_path, layout):
    components = tiny_components("sd1")
    out, inp = components.patcher.parameter("unet", ATTENTION + ".weight").shape
    te = "text_model.encoder.layers.0.self_attn.q_proj"  # as files name it
    te_path = next(n for n, _ in components.text_encoders[0].named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    te_out, te_in = components.patcher.parameter("text_encoder", te_path + ".weight").shape
    down, up, te_down, te_up = randn(4, inp, seed=1), randn(out, 4, seed=2), randn(4, te_in, seed=3), randn(te_out, 4, seed=4)
    kohya = {f"{KOHYA_ATTENTION}.lora_down.weight": down, f"{KOHYA_ATTENTION}.lora_up.weight": up,
             f"lora_te_{te.replace('.', '_')}.lora_down.weight": te_down,
             f"lora_te_{te.replace('.', '_')}.lora_up.weight": te_up}
    if layout == "peft":
        other = {f"unet.{ATTENTION}.lora_A.weight": down, f"unet.{ATTENTION}.lora_B.weight": up,
                 f"text_encoder.{te}.lora_A.weight": te_down, f"text_encoder.{te}.lora_B.weight": te_up}
    else:
        processor = ATTENTION.replace(".attn1.to_q", ".attn1.processor.to_q_lora")
        other = {f"unet.{processor}.down.weight": down, f"unet.{processor}.up.weight": up,
                 f"text_encoder.{te}.lora_linear_layer.down.weight": te_down,
                 f"text_encoder.{te}.lora_linear_layer.up.weight": te_up}
    results = []
    for state in (kohya, other):
        path = tmp_path / f"{len(results)}.safetensors"
        save_file(state, path)
        lora = load_lora(path, components)
        with components.patcher.applied([LoraPatch(lora, 0.9, 0.9)]):
            results.append([components.patcher.parameter(m, p + ".weight").detach().clone()
                            for m, p in (("unet", ATTENTION), ("text_encoder", te_path))])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_sdxl_kohya_names_are_ldm_names_and_two_text_encoders(tmp_path):
    components = tiny_components("sdxl")
    # The tiny SDXL U-Net: level 0 has no attention; input_blocks.3 is level 1's first ResBlock + transformer.
    pairs = {
        "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k": ("unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"),
        "lora_unet_middle_block_1_proj_in": ("unet", "mid_block.attentions.0.proj_in"),
        "lora_unet_output_blocks_0_0_in_layers_2": ("unet", "up_blocks.0.resnets.0.conv1"),
        "lora_te1_text_model_encoder_layers_1_mlp_fc2": ("text_encoder", "encoder.layers.1.mlp.fc2"),
        "lora_te2_text_model_encoder_layers_0_self_attn_out_proj": ("text_encoder_2", "encoder.layers.0.self_attn.out_proj"),
    }
    modules = components.patcher.modules
    # transformers 5 dropped CLIPTextModel's `text_model` level (4.x has it; the projection model keeps it).
    pairs = {key: (module, path if module == "unet" else next(
        name for name, _ in modules[module].named_modules() if name.endswith(path))) for key, (module, path) in pairs.items()}
    state = {}
    for seed, (key, (module, path)) in enumerate(pairs.items()):
        shape = components.patcher.parameter(module, path + ".weight").shape
        state[key + ".lora_down.weight"] = randn(2, shape[1], *shape[2:], seed=seed)
        state[key + ".lora_up.weight"] = randn(shape[0], 2, *([1] * (len(shape) - 2)), seed=seed + 10)
    save_file(state, tmp_path / "xl.safetensors")
    lora = load_lora(tmp_path / "xl.safetensors", components)
    assert sorted(layer.target for layer in lora.layers) == sorted(pairs.values())


def test_an_sd1_lora_on_sdxl_names_the_file_the_keys_and_the_family(tmp_path):
    sd1 = tiny_components("sd1")
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    to_k = sd1.patcher.parameter("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    state = {f"{key}.lora_down.weight": randn(2, to_k.shape[1], seed=1), f"{key}.lora_up.weight": randn(to_k.shape[0], 2, seed=2)}
    save_file(state, tmp_path / "made-for-sd1.safetensors", metadata={"ss_base_model_version": "sd_v1"})
    with pytest.raises(ModelLoadError) as error:
        load_lora(tmp_path / "made-for-sd1.safetensors", tiny_components("sdxl"))
    message = str(error.value)
    assert "made-for-sd1.safetensors" in message and key in message and "SDXL model" in message
    assert "made for SD 1.x" in message
    save_file(state, tmp_path / "no-metadata.safetensors")  # the family from the cross-attention width
    with pytest.raises(ModelLoadError, match=f"made for a model with cross-attention width {to_k.shape[1]}"):
        load_lora(tmp_path / "no-metadata.safetensors", tiny_components("sdxl"))


def test_unknown_kinds_and_wrong_shapes_are_refused_clearly(tmp_path):
    components = tiny_components("sd1")
    save_file({f"{KOHYA_ATTENTION}.on_input": torch.ones(4)}, tmp_path / "ia3.safetensors")
    with pytest.raises(ModelLoadError, match="ia3.safetensors: 1 keys of a kind brushwork does not know"):
        load_lora(tmp_path / "ia3.safetensors", components)
    out, inp = components.patcher.parameter("unet", ATTENTION + ".weight").shape
    save_file({f"{KOHYA_ATTENTION}.lora_down.weight": torch.ones(2, inp + 1),
               f"{KOHYA_ATTENTION}.lora_up.weight": torch.ones(out, 2)}, tmp_path / "wide.safetensors")
    with pytest.raises(ModelLoadError, match=rf"wide.safetensors: its LoRA layer for {ATTENTION} does not fit"):
        load_lora(tmp_path / "wide.safetensors", components)
    save_file({f"{KOHYA_ATTENTION}.alpha": torch.tensor(1.0)}, tmp_path / "half.safetensors")
    with pytest.raises(ModelLoadError, match="half.safetensors: layer .* has only \\['alpha'\\]"):
        load_lora(tmp_path / "half.safetensors", components)
    (tmp_path / "pickled.pt").write_bytes(b"not really")
    with pytest.raises(ModelLoadError, match="allow-pickle"):
        load_lora(tmp_path / "pickled.pt", components)
