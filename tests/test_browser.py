"""A real browser (Debian's chromium, driven by Playwright) through upload → masks → train → generate.

Screenshots of each step go to tests/artifacts/. `make test` installs playwright and chromium when missing.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from app_server import free_port, start_app, stop_app, stop_workers
from dreamrelation.toyworld.dataset import write_relation_dataset
from dreamrelation.toyworld.world import sample_scenes

pytestmark = pytest.mark.slow  # a live server (see make test-fast)

playwright = pytest.importorskip("playwright.sync_api", reason="make test installs playwright")
CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
# This network refuses Chromium's background connections: without these it waits on them.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 240_000


@pytest.mark.skipif(CHROMIUM is None, reason="make test installs Debian's chromium")
def test_browser_upload_then_example_masks_train_generate_compare_by_names(tmp_path, cache_dir):
    """The whole flow as a user clicks it, picking datasets, jobs and relations by name only (no id is typed or
    read), ending with the side-by-side view of the relation and the base model."""
    uploads = write_relation_dataset(tmp_path / "uploads", sample_scenes(2, seed=5, relations=("orbits",)), 13, 64, 64)
    videos = sorted(uploads.glob("*.mp4"))
    captions = "\n".join(v.with_suffix(".txt").read_text().strip() for v in videos)
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    home = tmp_path / "home"
    server = start_app(home, cache_dir, port, tmp_path / "app.log")
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{port}/")
            expect = playwright.expect

            # 1. The examples come first, with a preview; uploads below.
            expect(page.locator("#example-preview video")).to_be_attached()
            expect(page.get_by_text("Dataset id")).to_have_count(0)  # no raw ids on the page
            page.screenshot(path=ARTIFACTS / "1-start.png", full_page=True)
            page.locator("#videos input[type=file]").set_input_files([str(v) for v in videos])
            page.locator("#relation").get_by_role("textbox").fill("my orbits")
            page.locator("#captions").get_by_role("textbox").fill(captions)
            page.locator("#engine").get_by_label("basic").check()
            page.locator("#make-masks").click()
            expect(page.locator("#masks-summary")).to_contain_text("Masks made with: basic", timeout=TIMEOUT_MS)
            expect(page.locator("#masks-summary")).to_contain_text("✅ masks ready")  # the marks are explained
            expect(page.locator("#overlays video").first).to_be_attached()
            page.screenshot(path=ARTIFACTS / "2-masks.png", full_page=True)
            page.locator("#example input").click()
            page.get_by_role("option", name="orbits").click()
            page.locator("#load-example").click()
            expect(page.locator("#masks-summary")).to_contain_text("orbits", timeout=TIMEOUT_MS)

            # 2. Train on the example, picked by its name; follow the job by its name.
            page.get_by_role("tab", name="2. Train").click()
            expect(page.locator("#dataset-pick input")).to_have_value(re.compile(r"^orbits — \d+ video"))
            page.locator("#steps").get_by_role("spinbutton").fill("4")
            page.locator("#start-training").click()
            expect(page.locator("#job-summary")).to_contain_text("done", timeout=TIMEOUT_MS)
            expect(page.locator("#job-summary")).to_contain_text("on the CPU")  # what the memory preset means here
            expect(page.locator("#my-jobs input")).to_have_value(re.compile(r"^orbits — 1 GPU, submitted "))
            page.screenshot(path=ARTIFACTS / "3-train.png", full_page=True)

            # 3. Generate with the relation, picked by its name; then beside the base model.
            page.get_by_role("tab", name="3. Generate").click()
            page.locator("#refresh-relations").click()
            expect(page.locator("#relation-pick input")).to_have_value(re.compile(r"^orbits — 4 steps, "))
            page.locator("#prompt").get_by_role("textbox").fill("A red circle orbits a blue square.")
            page.locator("#gen-steps").get_by_role("spinbutton").fill("2")
            page.locator("#gen-frames").get_by_role("spinbutton").fill("7")
            page.locator("#generate").click()
            expect(page.locator("#result-video video")).to_be_attached(timeout=TIMEOUT_MS)
            expect(page.locator("#gallery video").first).to_be_attached()
            page.screenshot(path=ARTIFACTS / "4-generate.png", full_page=True)
            page.locator("#compare input[type=checkbox]").check()
            page.locator("#generate").click()
            expect(page.locator("#result-video video[src*='compare']")).to_be_attached(timeout=TIMEOUT_MS)
            width = page.locator("#result-video video").evaluate(
                "v => new Promise(done => v.readyState >= 1 ? done(v.videoWidth)"
                " : v.addEventListener('loadedmetadata', () => done(v.videoWidth)))")
            assert width == 128  # base | relation, each 64 wide
            page.screenshot(path=ARTIFACTS / "5-compare.png", full_page=True)
            browser.close()
    finally:
        stop_app(server)
        stop_workers(home)
