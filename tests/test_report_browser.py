"""The HTML report rendered in headless Chromium: every plot decodes and the key sections are shown."""
from __future__ import annotations

import json
import shutil

import pytest

from tunesmith import pipeline

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def test_report_renders_with_all_plots(recipe_file, browser):
    path = recipe_file(train={"max_steps": 6, "eval_every": 2, "save_every": 2},
                       eval={"baselines": ["few_shot", "rag"], "few_shot_k": 2, "max_examples": 10})
    run_dir = pipeline.run(path)
    browser.get((run_dir / "report.html").as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
    shown = {alt: (done, w, h) for alt, done, w, h in images}
    for alt in ("Metrics by system", "Training and validation loss", "Token lengths by split", "Confusion matrices"):
        assert alt in shown, f"plot {alt!r} missing from the report"
        done, w, h = shown[alt]
        assert done and w > 200 and h > 100, f"plot {alt!r} did not decode ({w}x{h})"
    headings = browser.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent);")
    for h in ("Recommendation", "Fine-tuning vs the cheap alternatives", "Forgetting", "Contamination",
              "Base vs tuned", "Loss curve"):
        assert h in headings
    systems = browser.execute_script(
        "return Array.from(document.querySelectorAll('table.systems tbody tr')).map(r => r.cells[0].textContent);")
    assert systems == ["base zero-shot", "base zero-shot, label-safe decoding", "base few-shot", "base + RAG",
                       "fine-tuned", "fine-tuned, label-safe decoding"]
    data = json.loads((run_dir / "eval" / "report_data.json").read_text())
    assert browser.find_element("css selector", ".rec b").text == data["recommendation"]["text"]
