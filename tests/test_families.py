"""The model families as data: detection, the diffusers-folder rule and the LoRA key map all read one table."""

from __future__ import annotations

import pytest

from brushwork.errors import ModelLoadError
from brushwork.models.detect import detect
from brushwork.models.families import FAMILIES, family_display_name, family_of_encoders, model_family
from brushwork.models.single_file import to_ldm_state_dict
from tiny_models import tiny_components


@pytest.mark.parametrize("variant", ["sd1", "sd2", "sdxl"])
def test_each_family_is_detected_from_its_own_description(variant):
    components = tiny_components(variant)
    family = components.model_family
    detection = detect(to_ldm_state_dict(components))
    assert detection.family == family.key
    assert [(layout.prefix, layout.kind, layout.with_projection, layout.drop_last_block)
            for layout in detection.text_encoders] == [
        (slot.ldm_prefix, slot.kind, slot.with_projection, slot.drop_last_block) for slot in family.text_encoders]
    kinds = ["open_clip" if encoder.config.hidden_act == "gelu" else "clip" for encoder in components.text_encoders]
    assert family_of_encoders(kinds) is family
    assert len(family.lora_text_prefixes) == len(family.text_encoders) == len(components.text_encoders)
    assert len(family.latent_rgb) == components.unet.config.out_channels


def test_order_names_and_unknown_families():
    assert list(FAMILIES) == ["sdxl", "sd2", "sd1"]  # most specific first
    assert [family_display_name(key) for key in FAMILIES] == ["SDXL", "SD 2.x", "SD 1.x"]
    assert model_family("sd2").native_size_for("v_prediction") == 768
    assert model_family("sd1").native_size_for("v_prediction") == 512
    assert family_of_encoders(["open_clip", "clip"]) is None
    with pytest.raises(ModelLoadError, match="unknown model family 'sd3'"):
        model_family("sd3")
