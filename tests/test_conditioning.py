"""Prompt -> context: chunking, emphasis with mean restoration, CLIP skip, SDXL pooled, schedules."""

from __future__ import annotations

import torch

from brushwork.engine.conditioning import PromptEncoder
from tiny_models import tiny_components


def _encoder(variant="sd1", clip_skip=1):
    components = tiny_components(variant)
    return components, PromptEncoder(components, clip_skip, torch.device("cpu"), torch.float32)


def _reference_context(components, text: str, layer: int | None = None) -> torch.Tensor:
    tokenizer, encoder = components.tokenizers[0], components.text_encoders[0]
    ids = tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        output = encoder(ids, output_hidden_states=True)
    if layer is None:
        return output.last_hidden_state
    return getattr(encoder, "text_model", encoder).final_layer_norm(output.hidden_states[layer])


def test_plain_prompt_equals_standard_clip_encoding():
    components, encoder = _encoder()
    positive, negative = encoder.encode_pair("a red circle", "", steps=10)
    assert torch.equal(positive.at(1).context, _reference_context(components, "a red circle"))
    assert torch.equal(negative.at(1).context, _reference_context(components, ""))


def test_clip_skip_2_uses_penultimate_layer_through_final_norm():
    components, encoder = _encoder(clip_skip=2)
    positive, _ = encoder.encode_pair("a red circle", "", steps=10)
    assert torch.allclose(positive.at(1).context, _reference_context(components, "a red circle", layer=-2))


def test_emphasis_scales_tokens_and_restores_the_mean():
    components, encoder = _encoder()
    plain = encoder.encode_pair("a red circle", "", steps=1)[0].at(1).context
    emphasised = encoder.encode_pair("a (red:1.5) circle", "", steps=1)[0].at(1).context
    assert emphasised.shape == plain.shape
    assert torch.allclose(emphasised.mean(), plain.mean(), atol=1e-6)
    ratio = emphasised[0, 2].norm() / plain[0, 2].norm()  # token 2 is "red" (after BOS and "a")
    other = emphasised[0, 1].norm() / plain[0, 1].norm()
    assert ratio / other > 1.4


def test_long_prompt_and_break_add_chunks_and_negative_is_padded_to_match():
    _, encoder = _encoder()
    long_prompt = " ".join(["red circle"] * 60)  # 120 tokens: two chunks
    positive, negative = encoder.encode_pair(long_prompt, "blurry", steps=1)
    assert positive.at(1).context.shape[1] == 154
    assert negative.at(1).context.shape[1] == 154
    broken, _ = encoder.encode_pair("red BREAK circle", "", steps=1)
    assert broken.at(1).context.shape[1] == 154


def test_prompt_editing_switches_context_at_the_asked_step():
    _, encoder = _encoder()
    positive, _ = encoder.encode_pair("a [red:blue:0.5] circle", "", steps=10)
    red = encoder.encode_pair("a red circle", "", steps=10)[0].at(1).context
    blue = encoder.encode_pair("a blue circle", "", steps=10)[0].at(1).context
    assert torch.equal(positive.at(5).context, red)
    assert torch.equal(positive.at(6).context, blue)
    alternating, _ = encoder.encode_pair("a [red|blue] circle", "", steps=4)
    assert torch.equal(alternating.at(1).context, red) and torch.equal(alternating.at(2).context, blue)
    assert torch.equal(alternating.at(3).context, red)


def test_sdxl_concatenates_both_encoders_with_pooled_and_zero_empty_negative():
    components, encoder = _encoder("sdxl")
    positive, negative = encoder.encode_pair("a red circle", "", steps=1)
    widths = sum(e.config.hidden_size for e in components.text_encoders)
    assert positive.at(1).context.shape == (1, 77, widths)
    assert positive.at(1).pooled.shape == (1, components.text_encoders[1].config.projection_dim)
    assert not negative.at(1).context.any() and not negative.at(1).pooled.any()
