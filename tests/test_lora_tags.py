"""`<lora:name:w>` tags never reach CLIP. The prompt's tags name LoRAs to apply (tests/test_lora.py); one that
is not in the models folder is refused before any model loads; tags in the negative prompt are removed and
noted, not applied."""

from __future__ import annotations

import pytest

from brushwork.engine.engine import Engine
from brushwork.errors import ModelLoadError
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe


def test_a_lora_that_is_not_there_is_refused_naming_the_folder(tmp_path, monkeypatch):
    (tmp_path / "Lora").mkdir()
    (tmp_path / "Lora" / "other.safetensors").write_bytes(b"")
    engine = Engine(ModelStore(tmp_path))
    monkeypatch.setattr(engine.store, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    for recipe in (Recipe(prompt="a red circle <lora:ink-style:0.8>"),
                   Recipe(prompt="a red circle", loras=[{"name": "ink-style"}])):
        with pytest.raises(ModelLoadError) as error:
            engine.run(recipe)
        assert "'ink-style' not found" in str(error.value) and str(tmp_path / "Lora") in str(error.value)
        assert "other.safetensors" in str(error.value)


def test_a_negative_prompt_tag_is_removed_and_noted():
    engine = Engine(ModelStore())
    base = Recipe(prompt="a red circle", negative_prompt="blurry", steps=3, seed=2, width=64, height=64)
    plain = engine.run(base)
    tagged = engine.run(base.model_copy(update={"negative_prompt": "blurry <lora:ink-style:0.8>"}))
    assert plain.images[0].image.tobytes() == tagged.images[0].image.tobytes()
    assert tagged.notes == ["<lora:ink-style:0.8> was removed from the prompt and not applied: LoRAs apply from "
                            "the prompt (or `loras`) for the whole run"]
    assert plain.notes == []
    assert "<lora:ink-style:0.8>" in tagged.images[0].infotext  # the recipe keeps it, as A1111's infotext does
