"""The app in a real browser: Debian's chromium driven by playwright (sync API).

Loads the page, clicks the first example, runs Generate with few steps and
checks what a person sees: one progress readout, the splat viewer on white, the
GLB mesh viewer, both videos, the downloads; refusals after an example click;
Stop keeping the last result; the seed comparison. Saves a screenshot under the
test's output folder; with CFD_UPDATE_SCREENSHOT=1 the run uses the example's
own step count and the screenshot is also copied to assets/screenshot.png (for
the README).

The browser is Debian's package (scripts/setup_browser.sh installs it with
apt-get); `playwright install` is never used. Skipped, with the reason, when
chromium or playwright is missing.
"""
from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import served_app

from cfd.runner import RUNS_FOLDER

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
    with served_app(runs) as (_, url, _):
        yield url, runs


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _pixels(png: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)


def _drawn_fraction(png: bytes) -> float:
    """Share of pixels that are not the white background."""
    return float((_pixels(png).min(axis=-1) < 200).mean())


def _wait_drawn(page, selector: str, tries: int = 60) -> bytes:
    canvas = page.locator(f"{selector} canvas")
    canvas.wait_for(state="visible", timeout=60_000)
    for _ in range(tries):  # the viewers load and sort asynchronously
        png = canvas.screenshot()
        if _drawn_fraction(png) > 0.02:
            return png
        page.wait_for_timeout(250)
    return canvas.screenshot()


def _open(browser, url, height=1300):
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(url)
    page.wait_for_selector("#generate-btn", timeout=60_000)
    return page


def _set(page, selector: str, value) -> None:
    field = page.locator(f"{selector} input")
    field.fill(str(value))
    field.press("Enter")
    field.blur()


def _wait_status(page, text: str, timeout=300_000) -> str:
    page.wait_for_function(f"document.querySelector('#status').innerText.includes({text!r})", timeout=timeout)
    return page.inner_text("#status")


def _toast(page, timeout=30_000) -> str:
    page.wait_for_selector(".toast-body", timeout=timeout)
    text = " ".join(page.locator(".toast-body").all_inner_texts())
    for close in page.locator(".toast-close").all():
        close.click()
    page.wait_for_timeout(300)
    return text


def test_generate_in_the_browser(app_url, browser, tmp_path):
    url, runs = app_url
    page = _open(browser, url)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # the UI says which backend is active, why SD is not, and what the exact prior knows
    assert "Backend: exact prior" in page.inner_text("#backend-note")
    assert "Stable Diffusion is not available" in page.inner_text("#backend-note")
    assert "rubber duck" in page.inner_text("#prior-note") and "a potted plant" in page.inner_text("#prior-note")

    # click the first example: a prompt the exact prior knows
    page.locator("#examples-exact tbody tr").first.click()
    page.wait_for_function("document.querySelector('textarea').value === 'a rubber duck'")
    if not UPDATE:
        _set(page, "#steps", FEW_STEPS)
    page.click("#generate-btn")

    # while it runs, one progress readout: the status line carries no step count of its own
    page.wait_for_function("/\\d+\\/\\d+ steps/.test(document.body.innerText)", timeout=120_000)
    counts = set(re.findall(r"\b\d+/\d+\b", page.inner_text("body")))
    assert len(counts) == 1, counts
    assert not re.search(r"\d+/\d+", page.inner_text("#status")), page.inner_text("#status")

    status = _wait_status(page, "Done")
    assert "cfd · seed 0" in status and "rubber duck" in status, status

    # the splat viewer draws the object on the white background it was asked for
    png = _wait_drawn(page, "#model3d")
    assert _drawn_fraction(png) > 0.02, "the Model3D canvas shows no splats"
    corners = _pixels(png)[[2, 2, -3, -3], [2, -3, 2, -3]]
    assert corners.min() > 240, f"the splat viewer's background is not white: {corners}"
    # the GLB mesh viewer draws the mesh (its faces wind outward: tests/test_export.py)
    mesh_png = _wait_drawn(page, "#mesh3d")
    assert _drawn_fraction(mesh_png) > 0.02, "the mesh viewer shows nothing"

    # both videos are there and decodable (H.264 in chromium)
    for elem in ("#render-video", "#noise-video"):
        page.wait_for_function(
            f"() => {{ const v = document.querySelector('{elem} video');"
            " return v && v.readyState >= 2 && v.videoWidth > 0 && v.duration >= 1; }", timeout=60_000)
    assert page.locator("#downloads").inner_text().count(".") >= 5  # ply, glb, mp4 ×2, json
    assert page.locator("#history img").count() == 1

    page.wait_for_timeout(1500)  # let the videos play a little for the picture
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    (tmp_path / "model3d.png").write_bytes(png)
    (tmp_path / "mesh3d.png").write_bytes(mesh_png)
    assert shot.stat().st_size > 10_000
    if UPDATE:
        shutil.copyfile(shot, ROOT / "assets" / "screenshot.png")
    print(f"\nscreenshot: {shot}")
    assert not errors, errors
    page.close()


def test_refusals_in_the_browser_are_the_apps_after_an_example(app_url, browser, capfd):
    """After an Example click (which updates components), bad values still get the
    app's message, typed numbers are never clamped, and the log has no traceback."""
    url, runs = app_url
    page = _open(browser, url)
    page.locator("#examples-exact tbody tr").nth(1).click()
    page.wait_for_function("document.querySelector('textarea').value === 'a toy'"
                           " && document.querySelector('#seed input').value === '1'")
    page.wait_for_timeout(500)
    _set(page, "#seed", -5)
    page.click("#generate-btn")
    text = _toast(page)
    assert "seed must be an integer between 0 and 2147483647 (got -5)" in text, text
    assert "less than minimum" not in text

    _set(page, "#seed", 0)
    _set(page, "#steps", 5000)
    assert page.locator("#steps input").input_value() == "5000"   # refused, not clamped to 3000
    page.click("#generate-btn")
    assert "steps must be an integer between 10 and 3000 (got 5000)" in _toast(page)

    _set(page, "#steps", 20)
    page.locator("textarea").first.fill("a giraffe")
    page.click("#generate-btn")
    text = _toast(page)
    assert "does not know 'a giraffe'" in text and "rubber duck" in text, text
    assert not any(p.name.startswith("run-") for p in (runs / RUNS_FOLDER).iterdir())
    assert "Traceback" not in capfd.readouterr().err
    page.close()


def test_stop_keeps_the_last_result(app_url, browser):
    """Stop during a run: the status says cancelled, the run's temp folder goes,
    and the last finished result (3D views, videos, downloads) stays."""
    url, runs = app_url
    page = _open(browser, url)
    _set(page, "#steps", 10)
    page.click("#generate-btn")
    _wait_status(page, "Done")
    _wait_drawn(page, "#model3d")
    video_src = page.locator("#render-video video").get_attribute("src")
    downloads = page.locator("#downloads").inner_text()

    _set(page, "#steps", 3000)
    page.click("#generate-btn")
    _wait_status(page, "Running", 120_000)
    page.wait_for_function("/\\d+\\/3k steps/.test(document.body.innerText)", timeout=120_000)
    page.click("#stop-btn")
    _wait_status(page, "Cancelled", 60_000)
    for _ in range(120):
        if not any(p.name.startswith("run-") for p in (runs / RUNS_FOLDER).iterdir()):
            break
        page.wait_for_timeout(250)
    assert not any(p.name.startswith("run-") for p in (runs / RUNS_FOLDER).iterdir()), \
        "the cancelled run left its folder"
    page.wait_for_timeout(1000)
    assert _drawn_fraction(_wait_drawn(page, "#model3d")) > 0.02, "Stop cleared the 3D view"
    assert page.locator("#render-video video").get_attribute("src") == video_src, "Stop cleared the video"
    assert page.locator("#downloads").inner_text() == downloads, "Stop cleared the downloads"
    assert page.locator("#mesh3d canvas").count() == 1
    page.close()


def test_compare_seeds_in_the_browser(app_url, browser):
    """Tiles keep their size as results arrive, captions are whole, and a picked
    result's seed goes to Generate."""
    url, runs = app_url
    page = _open(browser, url, height=1600)
    _set(page, "#steps", 10)
    page.get_by_role("tab", name="Compare seeds").click()
    page.click("#compare-btn")
    tiles = page.locator("#compare-gallery .thumbnail-item")
    tiles.first.wait_for(timeout=120_000)
    first_width = tiles.first.bounding_box()["width"]
    page.wait_for_function("document.querySelector('#compare-status').innerText.includes('Done')",
                           timeout=300_000)
    assert tiles.count() == 8   # 4 seeds × (cfd, sds)
    widths = {round(tiles.nth(i).bounding_box()["width"]) for i in range(tiles.count())}
    assert widths == {round(first_width)}, (first_width, widths)
    cut = page.evaluate("() => Array.from(document.querySelectorAll('#compare-gallery .caption-label'))"
                        ".filter(e => e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1)"
                        ".map(e => e.innerText)")
    assert not cut, f"captions cut: {cut}"
    assert "Diversity" in page.inner_text("#compare-table")

    tiles.nth(2).click()   # cfd, seed 2
    use = page.locator("#use-seed")
    page.wait_for_function("document.querySelector('#use-seed').innerText.includes('seed 2')")
    use.click()
    page.wait_for_function("document.querySelector('#seed input').value === '2'")
    assert page.get_by_role("tab", name="Result").get_attribute("aria-selected") == "true"
    page.close()
