"""`brushwork eval shapes` (brushwork.train.evaluate): prompts, scoring, the Engine path and the table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brushwork.cli import main
from brushwork.shapes import HELD_OUT, parse_prompt, render
from brushwork.train.evaluate import ATTRIBUTES, engine_source, eval_prompts, format_table, score
from brushwork.train.export import assemble, write_model
from brushwork.train.models import TOY_SPEC, build_components


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained toy model (32x32 pictures) written the way training writes one."""
    components = build_components(TOY_SPEC, seed=3)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    write_model(assemble(components.vae, components.text_encoders[0], components.unet, 1.0, TOY_SPEC.image_size), path)
    return path


def test_prompts_are_fixed_and_split_by_colour_shape_pair() -> None:
    train, heldout = eval_prompts(50, "train"), eval_prompts(50, "heldout")
    assert [p.prompt for p in train] == [p.prompt for p in eval_prompts(50, "train")]
    assert all((p.expectation.colour, p.expectation.shape) not in HELD_OUT for p in train)
    assert all((p.expectation.colour, p.expectation.shape) in HELD_OUT for p in heldout)
    assert all(parse_prompt(p.prompt) == p.expectation for p in train + heldout)


def test_the_drawings_themselves_score_full_marks() -> None:
    def drawings(item, seeds):
        return [render(item.scene, 64) for _ in seeds]

    for split in ("train", "heldout"):
        result = score(eval_prompts(60, split), drawings, range(2), cfg_scale=7.0)
        assert result.images == 120
        accuracy = result.accuracy()
        assert all(accuracy[a] == 1.0 for a in ATTRIBUTES if result.asked[a]), accuracy
        assert result.asked["position"] > 0 and result.asked["count"] == 120


def test_blank_pictures_score_nothing() -> None:
    from PIL import Image

    result = score(eval_prompts(10, "train"), lambda item, seeds: [Image.new("RGB", (64, 64), "grey")] * len(seeds),
                   range(1), cfg_scale=7.0)
    assert result.accuracy()["colour"] == 0.0 and result.accuracy()["all"] == 0.0
    assert "colour+shape" in format_table([result])


def test_engine_source_paints_one_picture_per_seed(tiny_model: Path) -> None:
    source = engine_source(tiny_model, steps=2, cfg_scale=7.0)
    item = eval_prompts(1, "train")[0]
    images = source(item, [5, 6, 7])
    assert len(images) == 3 and images[0].size == (32, 32)
    # Seeds are per picture, batched or not (up to the last bit of batched CPU kernels).
    alone = np.asarray(source(item, [5])[0], dtype=np.int16)
    assert np.abs(np.asarray(images[0], dtype=np.int16) - alone).max() <= 2
    assert images[0].tobytes() != images[1].tobytes()


def test_eval_command_runs_end_to_end(tiny_model: Path, capsys) -> None:
    argv = ["eval", "shapes", "--model", str(tiny_model), "--prompts", "3", "--seeds", "1", "--steps", "2",
            "--cfg-scale", "1", "7", "--no-progress", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["split"], r["cfg_scale"]) for r in report["results"]] == [
        ("train", 1.0), ("train", 7.0), ("heldout", 1.0), ("heldout", 7.0)]
    for result in report["results"]:
        assert result["images"] == 3
        assert all(v is None or 0.0 <= v <= 1.0 for v in result["accuracy"].values())
    assert report["seconds_per_image"] > 0

    assert main(argv[:-1] + ["--split", "heldout"]) == 0
    table = capsys.readouterr().out
    assert "heldout" in table and "colour+shape" in table and "picture" in table


def test_eval_command_rejects_a_missing_model(tmp_path: Path, capsys) -> None:
    assert main(["eval", "shapes", "--model", str(tmp_path / "none.safetensors"), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("error:")
