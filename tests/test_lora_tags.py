"""`<lora:name:w>` tags never reach CLIP: removed from the prompt, with a note, until LoRA is applied."""

from __future__ import annotations

import torch

from brushwork.engine.engine import Engine
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe


def test_a_lora_tag_is_removed_and_noted(monkeypatch):
    engine = Engine(ModelStore())
    base = Recipe(prompt="a red circle", steps=3, seed=2, width=64, height=64)
    plain = engine.run(base)
    tagged = engine.run(base.model_copy(update={"prompt": "a red circle <lora:ink-style:0.8>"}))
    assert torch.equal(torch.tensor(list(plain.images[0].image.getdata())), torch.tensor(list(tagged.images[0].image.getdata())))
    assert tagged.notes == ["<lora:ink-style:0.8> was removed from the prompt and not applied: "
                            "brushwork does not apply LoRAs yet"]
    assert plain.notes == []
    assert "<lora:ink-style:0.8>" in tagged.images[0].infotext  # the recipe keeps it, as A1111's infotext does
    grouped = engine.generate_group([base.model_copy(update={"prompt": "x <lora:a:1>"}), base])
    assert [len(result.notes) for result in grouped] == [1, 0]
