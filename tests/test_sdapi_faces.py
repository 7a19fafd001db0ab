"""Face restoration on /sdapi: `restore_faces` in txt2img/img2img and the extras' GFPGAN/CodeFormer
visibility run the restorer named by the options; without its weights, a clear 422 naming the folder."""

from __future__ import annotations

import pytest

from brushwork.infotext import format_infotext, parse_infotext, recipe_extras
from brushwork.recipe import Recipe
from test_api import assert_clean_error, client, data_url, models_dir, png_bytes  # noqa: F401 (fixtures)

FAST = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32}


@pytest.mark.parametrize("body, words", [
    ({"restore_faces": True}, ["CodeFormer", "codeformer-v0.1.0", "Codeformer"]),
    ({"restore_faces": True, "override_settings": {"face_restoration_model": "GFPGAN"}}, ["GFPGAN", "GFPGANv1.4"]),
    ({"restore_faces": True, "override_settings": {"face_restoration_model": "Nope"}}, ["unknown face restorer", "CodeFormer, GFPGAN"]),
])
def test_restore_faces_without_weights_is_a_clear_422(client, body, words):
    assert_clean_error(client.post("/sdapi/v1/txt2img", json=FAST | body), 422, *words)


@pytest.mark.parametrize("body, words", [
    ({"codeformer_visibility": 1}, ["CodeFormer", "Codeformer"]),
    ({"gfpgan_visibility": 0.5}, ["GFPGAN"]),
    ({"gfpgan_visibility": 2}, ["gfpgan_visibility", "between 0 and 1"]),
])
def test_extras_face_restoration_without_weights_is_a_clear_422(client, body, words):
    request = {"image": data_url(png_bytes()), **body}
    assert_clean_error(client.post("/sdapi/v1/extra-single-image", json=request), 422, *words)


def test_face_restoration_is_written_to_the_infotext_and_read_back():
    recipe = Recipe(prompt="a face", seed=3, width=32, height=32, model="tiny", restore_faces="CodeFormer",
                    codeformer_weight=0.25)
    text = format_infotext(recipe, seed=3, width=32, height=32, model_name="tiny", model_hash=None,
                           extra=recipe_extras(recipe))
    assert "Face restoration: CodeFormer, CodeFormer weight: 0.25" in text
    parsed = parse_infotext(text)[0]
    assert (parsed.restore_faces, parsed.codeformer_weight) == ("CodeFormer", 0.25)
