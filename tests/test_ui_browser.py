"""The web UI in a real browser: the full app under uvicorn on 127.0.0.1, driven by headless Chromium.

Types a prompt into txt2img, clicks Generate, waits for the picture, finds it in the gallery tab, and
checks that the page never asked for anything beyond 127.0.0.1 (the UI works offline). A screenshot
goes to `test-artifacts/ui-txt2img.png`.

Needs the `playwright` Python package and a Chromium binary (Debian: `apt-get install chromium`;
`BRUSHWORK_CHROMIUM` names another one). Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
from safetensors.torch import save_file

from brushwork.models.store import ModelStore
from brushwork.serve.app import create_app
from brushwork.serve.settings import Limits, Settings
from brushwork.shapes import make_dataset
from tiny_loras import kohya_file, lora_factors
from tiny_models import write_tiny_checkpoint

import uvicorn  # noqa: E402
from playwright import sync_api  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("BRUSHWORK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT_MS = 120_000  # one step of the test on a busy 2-core machine
LOCAL_HOSTS = {"127.0.0.1"}
USER, PASSWORD = "alice", "wonderland"  # the server asks for HTTP basic auth, as `--api-auth` makes it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server_connections() -> Iterator[list[str]]:
    """Every address this process (the server: gradio, uvicorn, the queue) connects to that is not local."""
    outside: list[str] = []
    connect = socket.socket.connect

    def recording_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            outside.append(str(address))
        return connect(sock, address)

    socket.socket.connect = recording_connect
    try:
        yield outside
    finally:
        socket.socket.connect = connect


@pytest.fixture(scope="module")
def server(tmp_path_factory, server_connections) -> Iterator[tuple[str, object]]:
    """The whole app (API + UI) served by uvicorn in a thread: (base URL, app)."""
    root = tmp_path_factory.mktemp("ui-browser")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    components = write_tiny_checkpoint("sd1", root / "models" / "Stable-diffusion" / "tiny.safetensors")
    (root / "models" / "Lora").mkdir()
    save_file(kohya_file(components, lora_factors(), seed=1), root / "models" / "Lora" / "ink.safetensors")
    yield from serve_ui(root)


def serve_ui(root: Path) -> Iterator[tuple[str, object]]:
    """The whole app (API + UI) over `root`'s models/ and data/, served by uvicorn on 127.0.0.1 in a thread
    while the generator is suspended: yields (base URL, app)."""
    from brushwork.serve.ui import mount

    settings = Settings(models_dir=root / "models", data_dir=root / "data", basic_auth={USER: PASSWORD},
                        limits=Limits(max_pixels=256 * 256, max_steps=60, max_batch=4, max_image_side=512))
    app = create_app(settings, store=ModelStore(root / "models", hash_cache=root / "hashes.json"), ui=mount)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="ui-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture(scope="module")
def browser():
    # CI installs Debian's chromium (.ci/run); a missing browser is a failure, never a skip.
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM} (apt-get install chromium, or set BRUSHWORK_CHROMIUM)"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def signed_in_context(browser):
    """A browser context signed in with the test user, with the tests' timeout."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  http_credentials={"username": USER, "password": PASSWORD})
    context.set_default_timeout(TIMEOUT_MS)
    return context


def generate_one(page, steps: int) -> None:
    """txt2img at the tiny model's 64x64 with `steps` steps: Generate, then wait until it says one picture is done."""
    for name, value in (("steps", str(steps)), ("width", "64"), ("height", "64")):
        box = page.locator(f"#txt2img-{name} input[type=number]")
        box.fill(value)
        box.press("Enter")
    page.locator("#txt2img-generate").click()
    status = page.locator("#txt2img-progress")
    sync_api.expect(status).to_have_text(re.compile(r"^\s*(Done|Error|Cancelled)"), timeout=TIMEOUT_MS)
    assert status.inner_text().strip().startswith("Done: 1 picture"), status.inner_text()


def test_txt2img_in_the_browser_offline(server, browser, server_connections):
    base_url, app = server
    outside: list[str] = []

    def guard(route) -> None:  # every request that would leave the machine is recorded and refused
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context = signed_in_context(browser)
    context.route("**/*", guard)
    page = context.new_page()
    page.on("websocket", lambda socket: outside.append(socket.url)
            if urlsplit(socket.url).hostname not in LOCAL_HOSTS else None)
    try:
        page.goto(base_url + "/", wait_until="load")

        # txt2img: a prompt, 4 steps at the tiny model's 64x64 (the machine is slow), Generate.
        page.locator("#txt2img-prompt textarea").fill("a lighthouse at dusk, brush strokes")
        generate_one(page, steps=4)
        sync_api.expect(page.locator("#txt2img-info textarea")).to_have_value(re.compile(r"Seed: \d+"))
        picture = page.locator("#txt2img-results img[src]").first
        sync_api.expect(picture).to_be_visible()
        picture.evaluate("img => img.decode()")  # loaded and decoded, not just in the DOM
        assert picture.evaluate("img => img.naturalWidth") == 64
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui-txt2img.png"), full_page=True)

        records = app.state.jobs.gallery()
        assert records and records[0].infotext.startswith("a lighthouse at dusk")
        assert "Steps: 4" in records[0].infotext
        assert app.state.jobs.get(records[0].job_id).owner == USER  # the signed-in user owns UI jobs

        # ♻ takes the seed of the picture just made; 🎲 goes back to random.
        seed = page.locator("#txt2img-seed input")
        page.locator("#txt2img-reuse-seed").click()
        sync_api.expect(seed).to_have_value(str(records[0].seed))
        page.locator("#txt2img-random-seed").click()
        sync_api.expect(seed).to_have_value("-1")

        # The gallery tab shows it; clicking it shows the picture's infotext.
        page.get_by_role("tab", name="Gallery").click()
        thumbnail = page.locator("#gallery-grid img[src]").first
        sync_api.expect(thumbnail).to_be_visible()
        thumbnail.click()
        sync_api.expect(page.locator("#gallery-info textarea")).to_have_value(
            re.compile("^a lighthouse at dusk"))
        page.screenshot(path=str(ARTIFACTS / "ui-gallery.png"), full_page=True)
    finally:
        context.close()

    assert outside == [], f"the page asked for things outside 127.0.0.1: {outside}"
    assert server_connections == [], f"the server connected outside 127.0.0.1: {server_connections}"


def test_lora_picker_adds_the_tag_and_the_job_applies_it(server, browser):
    base_url, app = server
    context = signed_in_context(browser)
    page = context.new_page()
    try:
        page.goto(base_url + "/", wait_until="load")
        prompt = page.locator("#txt2img-prompt textarea")
        prompt.fill("a red circle")
        page.locator("#txt2img-lora input").click()
        page.get_by_role("option", name="ink").click()
        sync_api.expect(prompt).to_have_value("a red circle <lora:ink:1>")
        sync_api.expect(page.locator("#txt2img-lora input")).to_have_value("")  # ready for the next one
        generate_one(page, steps=2)
        sync_api.expect(page.locator("#txt2img-info textarea")).to_have_value(re.compile(r'Lora hashes: "ink: '))
        page.screenshot(path=str(ARTIFACTS / "ui-lora.png"), full_page=True)
    finally:
        context.close()
    latest = app.state.jobs.gallery()[0]
    assert latest.infotext.startswith("a red circle <lora:ink:1>")


def test_train_tab_trains_a_lora_and_shows_its_curve_and_samples(server, browser):
    base_url, app = server
    make_dataset(app.state.training.datasets_dir / "circles", 4, seed=5, size=64, split="all")
    context = signed_in_context(browser)
    page = context.new_page()
    try:
        page.goto(base_url + "/", wait_until="load")
        page.get_by_role("tab", name="Train").click()
        page.locator("#train-refresh").click()
        page.locator("#train-dataset input").click()
        page.get_by_role("option", name="circles (4 pictures)").click()
        page.locator("#train-output textarea").fill("ui-circles")
        for name, value in (("steps", "4"), ("resolution", "64"), ("rank", "4"), ("lr", "0.001"),
                            ("sample-every", "2")):
            box = page.locator(f"#train-{name} input[type=number]")
            box.fill(value)
            box.press("Enter")
        page.locator("#train-new-words textarea").fill("skscircle=circle")
        page.locator("#train-sample-prompt textarea").fill("a red skscircle")
        page.locator("#train-start").click()
        state = page.locator("#train-state")
        sync_api.expect(state).to_have_attribute("data-state", re.compile("done|failed|cancelled"), timeout=TIMEOUT_MS)
        assert state.get_attribute("data-state") == "done", state.inner_text()
        assert "Lora/ui-circles.safetensors" in state.inner_text()
        sync_api.expect(page.locator("#train-samples img")).to_have_count(2)
        sync_api.expect(page.locator("#train-curve canvas, #train-curve svg").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "ui-train.png"), full_page=True)
    finally:
        context.close()
    assert (app.state.store.models_dir / "Lora" / "ui-circles.safetensors").is_file()
    job = app.state.training.list_jobs(USER)[0]
    assert len(job.losses) == 4 and job.request.new_words == ["skscircle=circle"]
