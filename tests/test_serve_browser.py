"""The page at `/` in headless Chromium (Debian's `chromium`, driven by Playwright): a real photograph
uploaded through the file picker and by drag-and-drop gives five bars and the attention overlay; the
method switch redraws it; a text file gives the error; the drop zone is reachable by keyboard.

`make test` installs chromium where it can (apt-get); without it this test skips and says why.
Set VITKIT_SCREENSHOT_DIR to keep the screenshots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from test_serve_support import photo_bytes, thread_server, tiny_model, wait_until  # noqa: E402

from vitkit.serve.app import ServeConfig, Service  # noqa: E402
from vitkit.serve.handler import BatchingHandler  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (make test tries it) to run the page test")
    with playwright_sync.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                  args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except Exception as e:  # noqa: BLE001 - a broken install is a skip with the reason, not a failure
            pytest.skip(f"{CHROMIUM} does not start under Playwright: {str(e).splitlines()[0]}")
        yield b
        b.close()


def test_page_classifies_a_photograph_and_shows_the_overlay(browser, tmp_path):
    model_dir = tiny_model(tmp_path)
    cat = tmp_path / "chelsea.jpg"
    cat.write_bytes(photo_bytes("chelsea"))
    notes = tmp_path / "notes.jpg"
    notes.write_text("these are my notes, not a picture\n")
    shots = Path(os.environ.get("VITKIT_SCREENSHOT_DIR") or tmp_path)
    svc = Service(lambda: BatchingHandler.from_source(str(model_dir), max_batch=8), ServeConfig(max_delay_ms=5))
    with thread_server(svc) as url:
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200)
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model-line').textContent.includes('tiny-vit')")

        # keyboard: Tab reaches the drop zone, which is a labelled button
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "drop"
        assert page.get_attribute("#drop", "role") == "button"

        # the file picker
        page.set_input_files("#file", str(cat))
        page.wait_for_selector("#bars li:nth-child(5)")
        page.wait_for_function("document.getElementById('overlay').complete && "
                               "document.getElementById('overlay').naturalWidth > 0 && "
                               "!document.getElementById('overlay-box').hidden")
        bars = page.locator("#bars li")
        assert bars.count() == 5
        labels = [bars.nth(i).locator(".name").inner_text() for i in range(5)]
        want = [p["label"] for p in httpx.post(url + "/v1/classify?topk=5", content=cat.read_bytes(),
                                                 headers={"content-type": "image/jpeg"}).json()["predictions"]]
        assert labels == want
        assert page.is_visible("#preview") and page.is_hidden("#error")
        assert "layer 1" in page.inner_text("#overlay-caption")
        page.screenshot(path=str(shots / "serve-page.png"), full_page=True)

        # the method switch redraws the overlay with rollout
        page.check("input[value=rollout]")
        page.wait_for_function("document.getElementById('overlay-caption').textContent.includes('rollout')")

        # drag-and-drop: a File in a DataTransfer dropped on the zone
        page.evaluate("""async (b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));
            document.getElementById('bars').replaceChildren();
            document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        }""", __import__("base64").b64encode(cat.read_bytes()).decode())
        page.wait_for_selector("#bars li:nth-child(5)")
        assert "dropped.jpg" in page.inner_text("#preview-name")

        # a text file named .jpg: the reason, no bars
        page.set_input_files("#file", str(notes))
        page.wait_for_selector("#error:not([hidden])")
        msg = page.inner_text("#error")
        assert "notes.jpg" in msg and "400" in msg and "text file" in msg
        assert page.locator("#bars li").count() == 0
        page.screenshot(path=str(shots / "serve-page-error.png"), full_page=True)
        assert errors == []
        page.close()
    assert (shots / "serve-page.png").stat().st_size > 10_000
