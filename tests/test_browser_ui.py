"""The web UI in a real browser: Debian's headless Chromium, driven by Playwright with the system browser
(Playwright's own browser builds are never downloaded), opens /ui on a live server, enters a prompt, and
gets an image whose screenshot shows the palette color the prompt asked for."""

import shutil
import time

import numpy as np
import pytest
from PIL import Image

from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.serve.app import HttpServer, create_app
from lumina_mgpt.serve.scheduler import BatchScheduler
from lumina_mgpt.shapes.spec import COLORS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system Chromium (Debian: apt-get install chromium; .ci/run installs it)"
)


@pytest.fixture(scope="module")
def ui_url():
    pipe = Pipeline.from_pretrained(device="cpu")
    app = create_app(pipe, "embedded", BatchScheduler(pipe), timeout_s=120)
    server = HttpServer(app).start()
    yield f"{server.url}/ui/"
    server.stop()


def share_near(picture: np.ndarray, color: tuple[int, int, int], tolerance: float = 50.0) -> float:
    """The share of pixels within `tolerance` (RGB distance) of `color`."""
    distance = np.linalg.norm(picture.astype(float) - np.asarray(color, dtype=float), axis=-1)
    return float((distance < tolerance).mean())


def test_the_ui_draws_the_prompt_in_the_browser(ui_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            # Generous waits: on a busy 2-core machine the page alone has taken 20 s to render.
            page.goto(ui_url, wait_until="load", timeout=120_000)
            page.locator("#prompt textarea").fill("a red circle", timeout=120_000)
            page.locator("#generate").click()
            page.locator("#status").get_by_text("done: 1 image(s) 64x64").wait_for(timeout=120_000)
            image = page.locator("#gallery img").first
            image.wait_for(state="visible", timeout=30_000)
            deadline = time.monotonic() + 30
            while not image.evaluate("img => img.complete && img.naturalWidth > 0"):
                assert time.monotonic() < deadline, "the gallery image never loaded"
                time.sleep(0.1)
            image.screenshot(path=tmp_path / "image.png")
            page.screenshot(path=tmp_path / "page.png")
        finally:
            browser.close()
    shown = np.asarray(Image.open(tmp_path / "image.png").convert("RGB"))
    assert min(shown.shape[:2]) >= 64
    # The shapes world: a red shape on its light gray background, and no other palette color.
    assert share_near(shown, COLORS["red"]) > 0.03
    assert share_near(shown, (224, 224, 224)) > 0.3
    assert share_near(shown, COLORS["blue"]) < 0.01
