"""The embedded model is a checkpoint like any other: remade from its PNG, listed, current, selectable."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from brushwork.cli import main
from brushwork.errors import ModelLoadError
from brushwork.models.store import EMBEDDED_MODEL, ModelStore
from test_api import TEST_LIMITS, make_client  # noqa: F401
from test_api import models_dir  # noqa: F401  (fixture)

FAST = {"steps": 2, "width": 64, "height": 64}


def test_from_png_remakes_an_embedded_picture_without_models_dir(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["generate", "a red circle", "--steps", "3", "--seed", "5", "-W", "64", "-H", "64",
                 "--output-dir", str(first), "--no-progress"]) == 0
    made = next(first.glob("*.png"))
    assert main(["generate", "--from-png", str(made), "--output-dir", str(second), "--no-progress"]) == 0
    again = next(second.glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(made)), np.asarray(Image.open(again)))


def test_not_found_says_where_it_looked(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        ModelStore(allow_paths=True).resolve("checkpoint", "nope")
    message = str(error.value)
    assert "no --models-dir given" in message and "not the embedded model" in message and "no file" in message
    assert "not in no" not in message and "brushwork-shapes.safetensors" in message
    with pytest.raises(ModelLoadError) as error:
        ModelStore(tmp_path).resolve("vae", "nope")
    assert f"not in {tmp_path.resolve() / 'VAE'}" in str(error.value) and "no file" not in str(error.value)


def test_store_lists_the_embedded_model_after_the_users_own(models_dir):  # noqa: F811
    store = ModelStore(models_dir)
    names = [entry.name for entry in store.entries("checkpoint")]
    assert names == ["more/second.safetensors", "tiny.safetensors", "brushwork-shapes.safetensors"]
    assert store.default_checkpoint() == (models_dir / "Stable-diffusion" / "more" / "second.safetensors").resolve()
    assert store.resolve("checkpoint", "brushwork-shapes") == EMBEDDED_MODEL
    assert ModelStore().default_checkpoint() == EMBEDDED_MODEL


def test_loading_evicts_before_it_loads(models_dir, monkeypatch):  # noqa: F811
    store = ModelStore(models_dir, max_loaded=1)
    store.load("tiny")
    seen = []
    original = store._load_components
    monkeypatch.setattr(store, "_load_components", lambda path: (seen.append(len(store._loaded)), original(path))[1])
    store.load("more/second")
    assert seen == [0]


def test_sdapi_without_models_dir_lists_reports_and_selects_the_embedded_model(tmp_path):
    with make_client(None, tmp_path / "data") as client:
        models = client.get("/sdapi/v1/sd-models").json()
        assert len(models) == 1
        item = models[0]
        assert item["model_name"] == "brushwork-shapes" and item["filename"] == str(EMBEDDED_MODEL)
        assert item["title"] == f"brushwork-shapes.safetensors [{item['hash']}]" and item["sha256"].startswith(item["hash"])
        options = client.get("/sdapi/v1/options").json()
        assert options["sd_model_checkpoint"] == item["title"] and options["sd_checkpoint_hash"] == item["sha256"]
        native = client.get("/api/v1/models").json()
        assert native["checkpoints"] == ["brushwork-shapes.safetensors"]
        assert native["default_checkpoint"] == "brushwork-shapes.safetensors"
        for chosen in (item["title"], item["hash"], item["sha256"], "brushwork-shapes"):
            assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": chosen}).status_code == 200, chosen
            assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == item["title"]
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", **FAST})
        assert response.status_code == 200, response.text
        assert '"sd_model_name": "brushwork-shapes"' in response.json()["info"]
