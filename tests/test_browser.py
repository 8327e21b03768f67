"""The app in a real browser: Debian's chromium driven by playwright (sync API).

Loads the page, clicks the first bundled example, runs Generate with few steps,
waits for the Model3D splat canvas (WebGL) and both videos, and saves a
screenshot under the test's output folder. With CFD_UPDATE_SCREENSHOT=1 the run
uses the example's own step count and the screenshot is also copied to
assets/screenshot.png (for the README).

The browser is Debian's package (scripts/setup_browser.sh installs it with
apt-get); `playwright install` is never used. Skipped, with the reason, when
chromium or playwright is missing.
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from conftest import served_app

CHROMIUM = os.environ.get("CFD_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
FEW_STEPS = 30
UPDATE = os.environ.get("CFD_UPDATE_SCREENSHOT") == "1"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-dev-shm-usage"]

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} not found: run scripts/setup_browser.sh (apt-get install chromium) "
                "to run the browser test", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip) is not installed")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    runs = tmp_path_factory.mktemp("browser_runs")
    with served_app(runs) as (_, url):
        yield url, runs


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _bright_fraction(png: bytes) -> float:
    """Share of pixels that are not near-black (the splat viewer clears to black)."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)
    return float((img.max(axis=-1) > 60).mean())


def test_generate_in_the_browser(app_url, browser, tmp_path):
    url, runs = app_url
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("#generate-btn", timeout=60_000)
    # the UI says which backend is active and why SD is not
    assert "Backend: exact prior" in page.inner_text("#backend-note")
    assert "Stable Diffusion is not available" in page.inner_text("#backend-note")

    # click the first bundled example: fills prompt, backend, scene set, method, seed, steps, res
    page.locator("#examples-exact tbody tr").first.click()
    page.wait_for_function("document.querySelector('#steps input[type=number]').value !== ''")
    if not UPDATE:
        steps = page.locator("#steps input[type=number]")
        steps.fill(str(FEW_STEPS))
        steps.press("Enter")
        steps.blur()
    page.click("#generate-btn")

    page.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=300_000)
    status = page.inner_text("#status")
    assert "cfd · seed 0" in status, status

    # the splat viewer: a WebGL canvas that draws the object (not just its black clear colour)
    canvas = page.locator("#model3d canvas")
    canvas.wait_for(state="visible", timeout=60_000)
    page.wait_for_function(
        "() => { const c = document.querySelector('#model3d canvas');"
        " return c && (c.getContext('webgl2') || c.getContext('webgl')) !== null; }")
    for _ in range(40):  # gsplat.js loads and sorts asynchronously
        if _bright_fraction(canvas.screenshot()) > 0.05:
            break
        page.wait_for_timeout(250)
    assert _bright_fraction(canvas.screenshot()) > 0.05, "the Model3D canvas shows no splats"

    # both videos are there and decodable (H.264 in chromium)
    for elem in ("#render-video", "#noise-video"):
        page.wait_for_function(
            f"() => {{ const v = document.querySelector('{elem} video');"
            " return v && v.readyState >= 2 && v.videoWidth > 0 && v.duration >= 1; }", timeout=60_000)
    assert page.locator("#downloads").inner_text().count(".") >= 4  # ply, glb, mp4 ×2, json

    page.wait_for_timeout(1500)  # let the videos play a little for the picture
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    canvas.screenshot(path=str(tmp_path / "model3d.png"))
    assert shot.stat().st_size > 10_000
    if UPDATE:
        shutil.copyfile(shot, ROOT / "assets" / "screenshot.png")
    print(f"\nscreenshot: {shot}")
    assert not errors, errors
    page.close()


def test_stop_button_in_the_browser(app_url, browser):
    """Stop during a long run: the status says cancelled and the run's temp folder goes."""
    url, runs = app_url
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#generate-btn", timeout=60_000)
    steps = page.locator("#steps input[type=number]")
    steps.fill("3000")
    steps.press("Enter")
    steps.blur()
    page.click("#generate-btn")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Running')", timeout=120_000)
    page.click("#stop-btn")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Cancelled')", timeout=60_000)
    for _ in range(120):
        if not any(p.name.startswith("run-") for p in runs.iterdir()):
            break
        page.wait_for_timeout(250)
    assert not any(p.name.startswith("run-") for p in runs.iterdir()), "the cancelled run left its folder"
    page.close()
