"""The web UI without a browser: form <-> Recipe mapping, the mask painter, send-to, seed buttons, progress,
the style picker, the tabs' handlers on the real JobQueue and a tiny model, and `mount` next to the API."""

from __future__ import annotations

import base64
import io
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from brushwork.errors import BrushworkError
from brushwork.infotext import parse_infotext
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe
from brushwork.serve.app import create_app
from brushwork.serve.jobs import Job, JobEvent, JobProgress, JobState
from brushwork.serve.settings import Limits, Settings
from brushwork.styles import PromptStyle
from brushwork.serve.ui_forms import (
    AUTOMATIC, SAME_SAMPLER, form_from_recipe, mask_from_editor, match_choice, owner_of, progress_html,
    queue_html, random_seed, recipe_from_form, reuse_seed,
)
from tiny_models import write_tiny_checkpoint

LIMITS = Limits(max_pixels=256 * 256, max_steps=60, max_batch=4, max_upload_bytes=256 * 1024, max_image_side=512)
TIMEOUT = 60.0

TXT2IMG_FORM: dict[str, Any] = {
    "prompt": "a red fox", "negative_prompt": "blurry", "styles": [], "model": "tiny.safetensors", "vae": AUTOMATIC,
    "sampler": "Euler a", "steps": 3, "cfg_scale": 6.5, "seed": 42, "width": 64, "height": 0,
    "batch_size": 1, "batch_count": 2, "clip_skip": 2, "hires_enable": False, "hires_upscaler": "Latent",
    "hires_scale": 2.0, "hires_resize_width": 0, "hires_resize_height": 0, "hires_steps": 0,
    "hires_denoising": 0.7, "hires_prompt": "", "hires_negative": "", "hires_sampler": SAME_SAMPLER,
}
IMG2IMG_FORM: dict[str, Any] = {
    **{key: value for key, value in TXT2IMG_FORM.items() if not key.startswith("hires")},
    "mode": "img2img", "init_image": None, "inpaint": None, "denoising_strength": 0.5,
    "resize_mode": "crop and resize", "mask_blur": 8, "inpainting_fill": "latent noise",
    "inpaint_area": "Only masked", "inpaint_padding": 16, "mask_mode": "Inpaint not masked",
    "outpaint_left": 0, "outpaint_right": 0, "outpaint_top": 0, "outpaint_bottom": 0,
}


STYLES_CSV = ('name,prompt,negative_prompt\nNone,,\nFilm,"cinematic still of {prompt}, 35mm",cartoon\n'
              'Oil,"oil painting, canvas",\n')
STYLES = {"Film": PromptStyle("Film", "cinematic still of {prompt}, 35mm", "cartoon"),
          "Oil": PromptStyle("Oil", "oil painting, canvas", "")}


def decode(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.partition(",")[2])))


# -- form -> Recipe ---------------------------------------------------------------------------------------

def test_txt2img_form_maps_every_field():
    recipe = recipe_from_form(TXT2IMG_FORM)
    assert recipe.model_dump(exclude_defaults=True) == {
        "prompt": "a red fox", "negative_prompt": "blurry", "model": "tiny.safetensors", "sampler": "Euler a",
        "steps": 3, "cfg_scale": 6.5, "seed": 42, "width": 64, "batch_count": 2, "clip_skip": 2,
    }
    assert recipe.vae is None and recipe.height is None and recipe.hires is None  # Automatic, 0 = native


def test_hires_fix_fields():
    form = TXT2IMG_FORM | {"hires_enable": True, "hires_upscaler": "Lanczos", "hires_scale": 1.5, "hires_steps": 5,
                           "hires_denoising": 0.4, "hires_prompt": "sharp", "hires_sampler": "Euler",
                           "hires_resize_width": 128, "hires_resize_height": 96, "vae": "ft-mse.safetensors"}
    recipe = recipe_from_form(form)
    assert recipe.vae == "ft-mse.safetensors"
    assert recipe.hires.model_dump() == {
        "scale": 1.5, "resize_width": 128, "resize_height": 96, "upscaler": "Lanczos", "steps": 5,
        "denoising_strength": 0.4, "prompt": "sharp", "negative_prompt": None, "sampler": "Euler",
    }
    assert recipe_from_form(form | {"hires_sampler": SAME_SAMPLER, "hires_prompt": ""}).hires.sampler is None


def test_img2img_form_inlines_the_picture_and_maps_its_settings():
    picture = Image.new("RGB", (48, 32), (10, 200, 30))
    recipe = recipe_from_form(IMG2IMG_FORM | {"init_image": picture, "outpaint_left": 16, "outpaint_top": 8})
    assert decode(recipe.init_image).size == (48, 32)
    assert recipe.mask is None  # the img2img sub-tab: the inpaint settings ride along unused
    assert (recipe.denoising_strength, recipe.resize_mode) == (0.5, "crop and resize")
    assert recipe.outpaint.model_dump() == {"left": 16, "right": 0, "top": 8, "bottom": 0}


def test_inpaint_mask_is_the_painted_layer():
    picture = Image.new("RGBA", (40, 40), (90, 90, 90, 255))
    stroke = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    stroke.paste((255, 255, 255, 200), (10, 10, 20, 30))  # a half-transparent white stroke
    editor = {"background": picture, "layers": [stroke], "composite": picture}
    recipe = recipe_from_form(IMG2IMG_FORM | {"mode": "inpaint", "inpaint": editor})
    mask = decode(recipe.mask)
    assert mask.mode == "L" and mask.size == (40, 40)
    assert mask.getpixel((15, 20)) == 255 and mask.getpixel((5, 5)) == 0 and mask.getbbox() == (10, 10, 20, 30)
    assert decode(recipe.init_image).mode == "RGB"
    assert recipe.inpaint_full_res and recipe.inpainting_mask_invert and recipe.inpainting_fill == "latent noise"
    assert (recipe.mask_blur, recipe.inpaint_full_res_padding) == (8, 16)


def test_mask_layers_of_another_size_are_stretched_and_empty_layers_mean_no_mask():
    picture = Image.new("RGB", (64, 32))
    small = Image.new("RGBA", (32, 16), (0, 0, 0, 0))
    small.paste((255, 0, 0, 255), (0, 0, 16, 16))  # the left half
    _, mask = mask_from_editor({"background": picture, "layers": [None, small]})
    assert mask.size == (64, 32) and mask.getbbox() == (0, 0, 32, 32)
    assert mask_from_editor({"background": picture, "layers": [Image.new("RGBA", (64, 32))]}) == (picture, None)
    assert mask_from_editor(None) == (None, None)
    assert mask_from_editor({"background": None, "layers": []}) == (None, None)


@pytest.mark.parametrize("change, words", [
    ({"mode": "img2img"}, "upload a picture"),
    ({"mode": "inpaint"}, "upload a picture"),
    ({"mode": "inpaint", "inpaint": {"background": Image.new("RGB", (8, 8)), "layers": []}}, "mask is empty"),
    ({"seed": None}, "seed: enter a number"),
    ({"steps": 2.5}, "steps: enter a whole number"),
])
def test_missing_pictures_and_numbers_are_refused_by_name(change, words):
    with pytest.raises(BrushworkError, match=words):
        recipe_from_form(IMG2IMG_FORM | change)


def test_values_the_recipe_refuses_name_the_field():
    from brushwork.serve.ui_studio import describe

    with pytest.raises(ValidationError) as caught:
        recipe_from_form(TXT2IMG_FORM | {"width": 60})
    assert describe(caught.value) == "width: must be a multiple of 8 (got 60; try 56 or 64)"
    with pytest.raises(ValidationError, match="outpaint makes its own mask"):
        stroke = Image.new("RGBA", (8, 8), (255, 255, 255, 255))
        recipe_from_form(IMG2IMG_FORM | {"mode": "inpaint", "outpaint_left": 8,
                                         "inpaint": {"background": Image.new("RGB", (8, 8)), "layers": [stroke]}})


def test_styles_picked_are_merged_into_the_prompts():
    form = TXT2IMG_FORM | {"styles": ["Film", "Oil"], "hires_enable": True, "hires_prompt": "sharp"}
    recipe = recipe_from_form(form, styles=STYLES)
    assert recipe.prompt == "cinematic still of a red fox, 35mm, oil painting, canvas"
    assert recipe.negative_prompt == "blurry, cartoon"
    assert recipe.hires.prompt == "cinematic still of sharp, 35mm, oil painting, canvas"  # as A1111 does
    assert recipe.hires.negative_prompt is None  # unset: the styled first-pass negative
    oil_first = recipe_from_form(TXT2IMG_FORM | {"styles": ["Oil", "Film"]}, styles=STYLES)
    assert oil_first.prompt == "cinematic still of a red fox, oil painting, canvas, 35mm"  # in the order picked
    assert recipe_from_form(TXT2IMG_FORM, styles=STYLES).prompt == "a red fox"
    with pytest.raises(BrushworkError, match="unknown style 'Gone'; the styles are: 'Film', 'Oil'"):
        recipe_from_form(TXT2IMG_FORM | {"styles": ["Gone"]}, styles=STYLES)


# -- Recipe -> form, seeds, owners ----------------------------------------------------------------------

A1111_HIRES = (
    "a castle on a hill\nNegative prompt: fog\n"
    "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 3702553003, Size: 512x768, "
    "Model hash: e4a30e4607, Model: more/second, Clip skip: 2, Denoising strength: 0.4, Hires upscale: 2, "
    "Hires upscaler: Latent (bicubic), Hires steps: 10, Version: v1.6.0"
)


def test_send_to_fills_the_form_from_an_infotext():
    recipe, _ = parse_infotext(A1111_HIRES)
    form = form_from_recipe(recipe, checkpoints=["tiny.safetensors", "more/second.safetensors"], vaes=[])
    assert {key: form[key] for key in ("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "seed",
                                       "width", "height", "clip_skip", "model")} == {
        "prompt": "a castle on a hill", "negative_prompt": "fog", "sampler": "DPM++ 2M Karras", "steps": 25,
        "cfg_scale": 7.5, "seed": 3702553003, "width": 512, "height": 768, "clip_skip": 2,
        "model": "more/second.safetensors",
    }
    assert form["hires_enable"] and form["hires_upscaler"] == "Latent (bicubic)"
    assert (form["hires_scale"], form["hires_steps"], form["hires_denoising"]) == (2.0, 10, 0.4)
    assert "vae" not in form  # none named: the form keeps its choice
    assert form["styles"] == []  # the infotext's prompt already holds its styles' text
    # Filled into the txt2img form and read back, it is the same recipe.
    again = recipe_from_form(TXT2IMG_FORM | {k: v for k, v in form.items() if k in TXT2IMG_FORM})
    assert again.model_dump(exclude={"batch_count", "model"}) == recipe.model_dump(exclude={"batch_count", "model"})


def test_send_to_img2img_settings_and_unknown_models():
    recipe, _ = parse_infotext("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Model: other, "
                               "Denoising strength: 0.3, Mask blur: 2, Masked content: fill, "
                               "Mask mode: Inpaint not masked, Inpaint area: Only masked, Masked area padding: 48")
    form = form_from_recipe(recipe, checkpoints=["tiny.safetensors"])
    assert "model" not in form  # not in the models folder: left as it is
    assert (form["denoising_strength"], form["mask_blur"], form["inpainting_fill"]) == (0.3, 2, "fill")
    assert (form["mask_mode"], form["inpaint_area"], form["inpaint_padding"]) == ("Inpaint not masked", "Only masked", 48)
    assert form["hires_enable"] is False


def test_model_names_match_like_the_store_resolves_them():
    choices = ["v1-5.safetensors", "sub/dream.ckpt"]
    assert match_choice("v1-5", choices) == "v1-5.safetensors"
    assert match_choice("v1-5.safetensors [6ce0161689]", choices) == "v1-5.safetensors"
    assert match_choice("dream", choices) == match_choice("sub/dream", choices) == "sub/dream.ckpt"
    assert match_choice("nope", choices) is None


def test_seed_buttons():
    assert random_seed() == -1
    assert reuse_seed(None) == -1  # nothing made yet
    assert reuse_seed(3702553003) == 3702553003


def test_owner_is_the_user_else_the_browser():
    assert owner_of("alice", "abc", "anonymous") == "alice"
    assert owner_of("anonymous", "abc", "anonymous") == "ui-abc"
    assert owner_of(None, "", "anonymous") == "ui"


# -- progress ------------------------------------------------------------------------------------------------

def make_job(state: JobState, **fields: Any) -> Job:
    return Job(id="0123456789abcdef", owner="ui", recipe=Recipe(prompt="<b>fox</b>"), state=state,
               created=datetime.now(timezone.utc), **fields)


def test_progress_text_and_bar():
    running = make_job(JobState.running, progress=JobProgress(step=5, total=20, eta_seconds=75.4))
    assert "Step 5/20 — 25% — ETA 1 min 15 s" in progress_html(running) and 'style="width:25%"' in progress_html(running)
    assert "estimating" in progress_html(make_job(JobState.running, progress=JobProgress(step=0, total=20)))
    assert "position 3" in progress_html(make_job(JobState.queued, position=2))
    start = datetime.now(timezone.utc)
    done = make_job(JobState.done, started=start, finished=start + timedelta(seconds=2.5))
    assert "Done: 0 pictures in 2.5 s" in progress_html(done)
    failed = progress_html(make_job(JobState.failed, error="steps: <script>"))
    assert "Error: steps: &lt;script&gt;" in failed and "<script>" not in failed
    table = queue_html([running])
    assert "&lt;b&gt;fox&lt;/b&gt;" in table and '<progress max="100" value="25">' in table and "01234567" in table


class FakeJobs:
    """Events and states played back: follow() must yield state changes at once, and end with the job."""

    def __init__(self, states: list[Job]):
        self.states, self.index = states, 0

    def events(self, job_id: str, *, timeout: float | None = None) -> Iterator[JobEvent]:
        while self.index < len(self.states) - 1:
            self.index += 1
            yield JobEvent(job_id=job_id, kind="x", state=self.states[self.index].state)

    def get(self, job_id: str) -> Job:
        return self.states[self.index]


def test_follow_yields_state_changes_throttles_progress_and_ends_finished():
    from brushwork.serve.ui_generate import follow

    steps = [make_job(JobState.running, progress=JobProgress(step=n, total=50)) for n in range(1, 50)]
    states = [make_job(JobState.queued, position=0), *steps, make_job(JobState.done)]
    seen = list(follow(FakeJobs(states), "0123456789abcdef", interval=60.0))
    assert [job.state for job in seen] == [JobState.running, JobState.done]  # 48 progress updates throttled away
    seen = list(follow(FakeJobs(states), "0123456789abcdef", interval=0.0))
    assert len(seen) == 50 and seen[-1].state is JobState.done


# -- the tabs' handlers on a real app ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from brushwork.serve.ui import mount

    root = tmp_path_factory.mktemp("ui")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint("sd1", root / "models" / "Stable-diffusion" / "tiny.safetensors")
    (root / "data").mkdir()
    (root / "data" / "styles.csv").write_text(STYLES_CSV, encoding="utf-8-sig")
    settings = Settings(models_dir=root / "models", data_dir=root / "data", limits=LIMITS,
                        basic_auth={"alice": "secret"})
    return create_app(settings, store=ModelStore(root / "models", hash_cache=root / "hashes.json"), ui=mount)


@pytest.fixture(scope="module")
def client(app) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:  # runs the lifespan: the queue works
        yield client


@pytest.fixture(scope="module")
def studio(app, client):
    from brushwork.serve.ui_studio import Studio

    state = app.state
    return Studio(jobs=state.jobs, store=state.store, settings=state.settings, upscalers=state.upscalers,
                  training=state.training)


def wait(studio, job_id: str) -> Job:
    deadline = time.monotonic() + TIMEOUT
    while not (job := studio.jobs.get(job_id)).state.finished:
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def test_mount_serves_the_page_at_root_behind_auth_and_keeps_the_apis(client):
    assert client.get("/").status_code == 401  # the app's auth covers the UI too
    auth = ("alice", "secret")
    page = client.get("/", auth=auth)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<title>brushwork</title>" in page.text or "brushwork" in page.text
    assert "fonts.googleapis" not in page.text
    # The user's own checkpoints first, then the embedded model.
    assert client.get("/api/v1/models", auth=auth).json()["checkpoints"] == ["tiny.safetensors",
                                                                             "brushwork-shapes.safetensors"]
    assert "Euler a" in [sampler["name"] for sampler in client.get("/sdapi/v1/samplers", auth=auth).json()]
    assert client.get("/openapi.json", auth=auth).status_code == 200
    assert client.get("/api/v1/jobs/nope", auth=auth).status_code == 404  # the API's own 404, not the UI's page


def test_submit_gallery_queue_and_png_info(studio, tmp_path):
    from brushwork.serve.ui_generate import result_items, send_values
    from brushwork.serve.ui_tabs import gallery_page, queue_view, read_infotext, watch_queue

    recipe = recipe_from_form(TXT2IMG_FORM | {"steps": 2, "height": 64, "batch_count": 1})
    job = wait(studio, studio.submit(recipe, "ui-test").id)
    assert job.state is JobState.done and job.owner == "ui-test"
    [(path, caption)] = result_items(studio.jobs, job)
    assert Path(path).is_file() and caption == f"seed {job.images[0].seed}"

    items, details, label, page = gallery_page(studio, 5)  # past the end: the last page there is
    assert page == 0 and label == "Page 1" and items[0][0] == details[0][0] == path
    assert details[0][1] == job.images[0].infotext

    table, preview, open_jobs = queue_view(studio, "ui-test")
    assert job.id[:8] in table and ">done<" in table and preview is None and open_jobs == []
    assert queue_view(studio, "someone-else")[0].startswith('<p class="bw-empty">')
    [(shown_table, shown_preview, _)] = list(watch_queue(studio, "ui-test", lifetime=0))  # one update, then ends
    assert shown_table == table

    infotext, fields = read_infotext(path)
    assert infotext == job.images[0].infotext and fields["Prompt"] == "a red fox" and fields["Steps"] == "2"
    blank = tmp_path / "blank.png"
    Image.new("RGB", (8, 8)).save(blank)
    assert read_infotext(str(blank)) == ("", {"Note": "This picture carries no generation parameters."})

    values = send_values(studio, infotext, ["prompt", "model", "seed", "steps"])
    assert values == ["a red fox", "tiny.safetensors", job.images[0].seed, 2]
    with pytest.warns(UserWarning, match="infotext is empty"):  # gr.Warning outside a request warns
        assert send_values(studio, "", ["prompt"]) is None


def test_submit_applies_the_server_limits(studio):
    from brushwork.serve.limits import OverLimit

    with pytest.raises(OverLimit, match="max-steps"):
        studio.submit(recipe_from_form(TXT2IMG_FORM | {"steps": 61}), "ui-test")
    with pytest.raises(BrushworkError, match="not found"):
        studio.submit(recipe_from_form(TXT2IMG_FORM | {"model": "../../etc/passwd", "height": 64}), "ui-test")


def test_extras_upscale_keeps_and_extends_the_infotext(studio):
    from brushwork.serve.ui_tabs import upscale_picture

    picture = Image.new("RGB", (32, 24), (200, 10, 10))
    picture.info["parameters"] = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x24"
    result, info = upscale_picture(studio, picture, "Lanczos", "Scale by", 2, None, None)
    assert result.size == (64, 48)
    assert info.endswith("Postprocess upscale by: 2, Postprocess upscaler: Lanczos") and info.startswith("a cat")
    assert result.info["parameters"] == info
    result, _ = upscale_picture(studio, picture, "Nearest", "Scale to", 2, 40, 40)
    assert result.size == (40, 40)
    with pytest.raises(BrushworkError, match="over this server's limit"):
        upscale_picture(studio, Image.new("RGB", (40, 30)), "Lanczos", "Scale by", 8, None, None)  # 320x240
    with pytest.raises(BrushworkError, match="512 pixels on a side"):
        upscale_picture(studio, Image.new("RGB", (600, 8)), "Lanczos", "Scale by", 1, None, None)


# -- the style picker --------------------------------------------------------------------------------------

def test_style_picker_offers_the_data_dirs_styles(studio, tmp_path):
    from dataclasses import replace

    from brushwork.serve.ui import build_ui
    from brushwork.serve.ui_generate import style_choices
    from brushwork.serve.ui_studio import Studio

    assert studio.style_names() == ["Film", "Oil"]  # the empty "None" row (A1111's "no style") is left out
    assert style_choices(studio) == (["Film", "Oil"], None)
    blocks = build_ui(studio)
    pickers = {block.elem_id: block for block in blocks.blocks.values()
               if getattr(block, "elem_id", None) in ("txt2img-styles", "img2img-styles")}
    assert set(pickers) == {"txt2img-styles", "img2img-styles"}
    for picker in pickers.values():
        assert picker.multiselect and picker.value == [] and [value for _, value in picker.choices] == ["Film", "Oil"]

    elsewhere = Studio(jobs=studio.jobs, store=studio.store, settings=replace(studio.settings, data_dir=tmp_path),
                       upscalers=studio.upscalers, training=studio.training)
    names, note = style_choices(elsewhere)
    assert names == [] and "add a styles.csv" in note
    (tmp_path / "styles.csv").write_text("name,prompt\nfilm,grain, 35mm\n")
    names, note = style_choices(elsewhere)  # the page still builds; the picker says what is wrong
    assert names == [] and f"{tmp_path / 'styles.csv'}, line 2: 3 fields" in note


def _generate_handler(blocks, kind: str):
    [handler] = [fn for fn in blocks.fns.values()
                 if fn.name == "run" and any(getattr(c, "elem_id", None) == f"{kind}-styles" for c in fn.inputs)]
    return handler


def test_generate_merges_the_picked_styles_when_it_submits(studio):
    from brushwork.serve.ui import build_ui
    from brushwork.serve.ui_forms import TXT2IMG_FIELDS

    generate = _generate_handler(build_ui(studio), "txt2img")
    progress, _, infotext, job_id = generate.outputs[:4]
    form = TXT2IMG_FORM | {"styles": ["Film", "Oil"], "steps": 2, "height": 64, "batch_count": 1}
    updates = list(generate.fn(None, "styles-test", *(form[name] for name in TXT2IMG_FIELDS)))
    job = studio.jobs.get(updates[0][job_id])
    assert job.state is JobState.done and job.owner == "ui-styles-test"
    assert job.recipe.prompt == "cinematic still of a red fox, 35mm, oil painting, canvas"
    assert job.recipe.negative_prompt == "blurry, cartoon"
    assert updates[-1][infotext].splitlines()[:2] == [  # the infotext shows the expanded prompts, as A1111's
        "cinematic still of a red fox, 35mm, oil painting, canvas", "Negative prompt: blurry, cartoon"]

    with pytest.warns(UserWarning, match="unknown style 'Gone'"):  # e.g. removed from the file since
        [update] = list(generate.fn(None, "styles-test", *((form | {"styles": ["Gone"]})[name] for name in TXT2IMG_FIELDS)))
    assert "unknown style &#x27;Gone&#x27;" in update[progress]


# -- the Train tab -----------------------------------------------------------------------------------------

def test_train_tab_sends_its_new_words_to_the_request(studio, tmp_path):
    from dataclasses import replace

    from brushwork.serve.training import TrainingQueue
    from brushwork.serve.ui import build_ui
    from brushwork.serve.ui_studio import Studio, gr

    training = TrainingQueue(tmp_path / "data", studio.store, LIMITS)  # never started: it keeps what it is sent
    (training.datasets_dir / "circles").mkdir(parents=True)
    [submit] = [fn for fn in build_ui(replace(studio, training=training)).fns.values()
                if fn.name == "submit" and any(getattr(c, "elem_id", None) == "train-new-words" for c in fn.inputs)]

    def send(**boxes):  # the form as the page starts, with the boxes named by their elem_id changed
        given = {"train-dataset": "circles", "train-output": "circles-style"} | boxes
        values = [given.get(getattr(box, "elem_id", None), box.value) for box in submit.inputs[1:]]
        return training.get(submit.fn(None, "train-test", *values)).request

    assert send(**{"train-new-words": "skscircle=round shape, sksdot"}).new_words == ["skscircle=round shape", "sksdot"]
    assert send(**{"train-output": "no-words"}).new_words == []
    # Hidden for another kind, the box's leftover text is not part of that run.
    embedding = send(**{"train-kind": "embedding", "train-output": "circle-word", "train-token": "skscircle",
                        "train-init-word": "circle", "train-new-words": "sksdot"})
    assert embedding.kind.value == "embedding" and embedding.new_words == []
    controlnet = send(**{"train-kind": "controlnet", "train-output": "circle-edges", "train-new-words": "sksdot"})
    assert controlnet.kind.value == "controlnet" and controlnet.conditioning == "conditioning"
    # A bad entry gets the request's own message, as the API and the CLI give it.
    for text, entry in (("sks/dot", "sks/dot"), ("sksdot,", "")):
        with pytest.raises(gr.Error) as refused:
            send(**{"train-output": "refused", "train-new-words": text})
        assert f"new word {entry!r} (new_words, --new-word): WORD or WORD=INIT" in refused.value.message
    assert len(training.list_jobs("ui-train-test")) == 4
    training.close()
