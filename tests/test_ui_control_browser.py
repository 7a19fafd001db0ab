"""The ControlNet accordion in a real browser: the full app under uvicorn on 127.0.0.1, driven by headless Chromium
(as tests/test_ui_browser.py, whose browser and helpers this uses), with a tiny SD 1.x checkpoint and a tiny
ControlNet in the models folder's ControlNet/.

Uploads a picture into unit 0, picks canny (its sliders appear, relabelled), previews the edge map; enables the
unit, is told to pick a model, picks the tiny ControlNet, generates, and finds the unit in the job's recipe
through the API. Screenshots go to `test-artifacts/ui-controlnet*.png`.
"""

from __future__ import annotations

import re
from typing import Iterator

import httpx
import pytest
from PIL import Image

from test_ui_browser import (  # noqa: F401 (browser: a fixture)
    ARTIFACTS, PASSWORD, USER, browser, generate_one, serve_ui, signed_in_context,
)
from tiny_controls import write_tiny_controlnet
from tiny_models import write_tiny_checkpoint

from playwright import sync_api  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, object]]:
    """The whole app (API + UI) with a tiny checkpoint and ControlNet, served by uvicorn in a thread."""
    root = tmp_path_factory.mktemp("ui-control-browser")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint("sd1", root / "models" / "Stable-diffusion" / "tiny.safetensors")
    write_tiny_controlnet(root / "models" / "ControlNet" / "edges", family="sd1", layout="folder", seed=1)
    yield from serve_ui(root)


def pick(page, dropdown: str, option: str) -> None:
    page.locator(f"#{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    sync_api.expect(page.locator(f"#{dropdown} input")).to_have_value(option)


def test_controlnet_unit_previews_and_generates(server, browser, tmp_path):
    base_url, app = server
    sketch = tmp_path / "square.png"
    picture = Image.new("RGB", (64, 64), "black")
    picture.paste("white", (16, 16, 48, 48))
    picture.save(sketch)

    context = signed_in_context(browser)
    page = context.new_page()
    unit = "#txt2img-control-0"
    try:
        page.goto(base_url + "/", wait_until="load")
        page.locator("#txt2img-prompt textarea").fill("a white square")
        page.locator("#txt2img-controlnet").get_by_role("button", name="ControlNet").first.click()
        sync_api.expect(page.get_by_role("tab", name="ControlNet Unit 2")).to_be_visible()

        # Upload, pick canny: its two thresholds appear with the extension's labels and defaults.
        page.locator(f"{unit}-image input[type=file]").set_input_files(str(sketch))
        sync_api.expect(page.locator(f"{unit}-image img[src]")).to_be_visible()
        sync_api.expect(page.locator(f"{unit}-threshold-a")).to_be_hidden()
        pick(page, "txt2img-control-0-module", "canny")
        sync_api.expect(page.locator(f"{unit}-threshold-a")).to_contain_text("Low Threshold")
        sync_api.expect(page.locator(f"{unit}-threshold-b")).to_contain_text("High Threshold")
        sync_api.expect(page.locator(f"{unit}-threshold-a input[type=number]")).to_have_value("100")
        sync_api.expect(page.locator(f"{unit}-threshold-a [data-testid=reset-button]")).to_have_count(0)

        # Preview: the edge map of the square at the tab's size.
        for name in ("width", "height"):
            box = page.locator(f"#txt2img-{name} input[type=number]")
            box.fill("64")
            box.press("Enter")
        page.locator(f"{unit}-run-preview").click()
        shown = page.locator(f"{unit}-preview img[src]")
        sync_api.expect(shown).to_be_visible()
        shown.evaluate("img => img.decode()")
        assert shown.evaluate("img => img.naturalWidth") == 64
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui-controlnet-preview.png"), full_page=True)

        # Enabled without a model: Generate says what is missing and queues nothing.
        page.locator(f"{unit}-enable input").check()
        page.locator("#txt2img-generate").click()
        sync_api.expect(page.locator("#txt2img-progress")).to_have_text(
            re.compile(r"Error: ControlNet Unit 0: pick a ControlNet model"))
        assert app.state.jobs.list_jobs(owner=USER) == []

        pick(page, "txt2img-control-0-model", "edges")
        generate_one(page, steps=2)
        page.screenshot(path=str(ARTIFACTS / "ui-controlnet.png"), full_page=True)
    finally:
        context.close()

    [job] = app.state.jobs.list_jobs(owner=USER)
    view = httpx.get(f"{base_url}/api/v1/jobs/{job.id}", auth=(USER, PASSWORD), timeout=30).json()
    [control] = view["recipe"]["control_units"]
    assert {key: control[key] for key in ("model", "module", "threshold_a", "threshold_b", "weight")} == {
        "model": "edges", "module": "canny", "threshold_a": 100.0, "threshold_b": 200.0, "weight": 1.0}
    assert control["image"].startswith("data:image/png;base64,")
