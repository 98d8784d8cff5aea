"""The dashboard in headless Chromium against a real uvicorn server: sign in, runs list, live curves, compare.

Fails on any JavaScript console error. With ``TUNESMITH_SCREENSHOTS=1`` the pages are saved as PNGs in
docs/screenshots/ (for the README); otherwise into the test's temporary folder.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from test_dashboard import KEY, make_run, write_metrics
from tunesmith.serve import ServeSettings
from tunesmith.serve.app import create_app
from tunesmith.serve.background import BackgroundServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
DOCS_SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", "--hide-scrollbars"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def wait_for(check, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def js_errors(driver) -> list[str]:
    """Console messages of level SEVERE (uncaught errors, failed loads) since the last call."""
    return [f"{e['level']}: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def shoot(driver, name: str, folder: Path) -> Path:
    """A PNG of the viewport (1280x900), shrunk to 960 px wide when Pillow is there."""
    path = folder / f"dashboard-{name}.png"
    png = driver.get_screenshot_as_png()
    try:
        import io

        from PIL import Image
        img = Image.open(io.BytesIO(png)).convert("RGB")
        img = img.resize((960, round(img.height * 960 / img.width)), Image.LANCZOS)
        img.save(path, optimize=True)
    except ImportError:
        path.write_bytes(png)
    return path


def create_job(url: str) -> str:
    """A fine-tuning job through the API (no worker: it stays in validating_files)."""
    import httpx
    rows = "".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                            {"role": "assistant", "content": "hello"}]}) + "\n" for i in range(12))
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEY}"}) as c:
        file_id = c.post("/v1/files", files={"file": ("t.jsonl", rows.encode(), "application/jsonl")},
                         data={"purpose": "fine-tune"}).json()["id"]
        return c.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id}).json()["id"]


def test_sign_in_runs_live_run_and_compare(tmp_path, browser):
    shots = DOCS_SHOTS if os.environ.get("TUNESMITH_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "runs"
    make_run(root, "sentiment-lora-001", lr=1e-3, steps=40, created="2026-11-30T09:00:00")
    make_run(root, "sentiment-dora-001", lr=2e-3, steps=40, created="2026-11-30T10:00:00", method="dora")
    live = make_run(root, "sentiment-live-001", steps=10, finished=False, created="2026-11-30T11:00:00")
    from tunesmith.jobs.app import JobsParts
    from tunesmith.jobs.settings import JobsSettings
    jobs = JobsParts(JobsSettings(db_url=f"sqlite:///{tmp_path / 'jobs.db'}", files_dir=tmp_path / "files",
                                  template={"train": {"batch_size": 4}}, models={"tiny": "/models/tiny-llama"}))
    app = create_app(ServeSettings(model="tiny-model-not-loaded", runs=[root], api_keys=[KEY]), routers=jobs.routers)
    with BackgroundServer(app) as srv:
        job_id = create_job(srv.url)
        d = browser
        # sign in: the dashboard sends an unauthenticated visitor to the login page
        d.get(srv.url + "/")
        wait_for(lambda: "/ui/login" in d.current_url, what="the login page")
        shoot(d, "login", shots)
        d.find_element("id", "key").send_keys(KEY)
        d.find_element("id", "sign-in").click()
        wait_for(lambda: d.current_url.endswith("/ui/"), what="the runs page after sign-in")

        # runs list: every run, newest first; the filter hides rows
        names = d.execute_script("return Array.from(document.querySelectorAll('#run-rows tr'))"
                                 ".map(r => r.dataset.id);")
        assert d.find_element("css selector", f'#job-rows tr[data-job="{job_id}"]').get_attribute("data-status") \
            == "validating_files"
        assert names == ["sentiment-live-001", "sentiment-dora-001", "sentiment-lora-001"]
        assert d.execute_script("return document.cookie") == ""            # the key cookie is HttpOnly
        d.find_element("id", "filter").send_keys("dora")
        visible = d.execute_script("return Array.from(document.querySelectorAll('#run-rows tr:not(.hidden)'))"
                                   ".map(r => r.dataset.id);")
        assert visible == ["sentiment-dora-001"]
        d.find_element("id", "filter").clear()
        d.execute_script("document.getElementById('filter').dispatchEvent(new Event('input'));")
        # a run started elsewhere (the CLI) appears without reloading the page
        make_run(root, "sentiment-cli-001", steps=3, finished=False, created="2026-11-30T12:00:00")
        wait_for(lambda: d.execute_script("return !!document.querySelector('#run-rows tr[data-id=\"sentiment-cli-001\"]');"),
                 what="the new run in the list")
        # the job's Stop button calls the jobs API (through the dashboard: key and CSRF checked)
        d.find_element("css selector", f'#job-rows button[data-job="{job_id}"][data-action="cancel"]').click()
        wait_for(lambda: "now cancelled" in d.find_element("id", "job-message").text, what="the job stopped")
        wait_for(lambda: d.execute_script(f"return document.querySelector('#job-rows tr[data-job=\"{job_id}\"]')"
                                          ".dataset.status;") == "cancelled", what="the jobs table refreshed")
        shoot(d, "runs", shots)
        assert not js_errors(d)

        # run page: the loss chart is drawn from the stream, then gains the records appended to metrics.jsonl
        d.get(f"{srv.url}/ui/run/sentiment-live-001")
        points = "return tsCharts.loss ? tsCharts.loss.data[0].length : 0;"
        wait_for(lambda: d.execute_script(points) == 10, what="10 steps on the loss chart")
        assert d.execute_script("return tsCharts.loss.data[1].filter(v => v !== null).length;") == 10
        assert d.execute_script("return tsCharts.loss.data[2].filter(v => v !== null).length;") == 2   # val
        assert "step 10 / 20" in d.find_element("id", "progress-text").text
        write_metrics(live / "metrics.jsonl", range(11, 16))
        wait_for(lambda: d.execute_script(points) == 15, what="the appended steps on the live chart")
        assert d.execute_script("return tsCharts.lr.data[0].length;") == 15
        assert "step 15 / 20 (75%)" in d.find_element("id", "progress-text").text
        d.find_element("id", "log-scale").click()
        d.find_element("id", "smooth").click()
        assert d.execute_script("return tsCharts.loss.scales.y.distr;") == 3
        assert d.execute_script(points) == 15
        shoot(d, "run", shots)
        assert not js_errors(d)

        # a finished run: the report in its frame, artifacts to download
        d.get(f"{srv.url}/ui/run/sentiment-lora-001")
        wait_for(lambda: d.execute_script(points) == 40, what="the finished run's curve")
        links = d.execute_script("return Array.from(document.querySelectorAll('#artifacts a'))"
                                 ".map(a => a.getAttribute('href'));")
        assert "/ui/run/sentiment-lora-001/files/train.json" in links
        assert not js_errors(d)

        # compare: tick two runs in the list, compare them
        d.get(srv.url + "/ui/")
        for rid in ("sentiment-lora-001", "sentiment-dora-001"):
            d.find_element("css selector", f'#run-rows input[value="{rid}"]').click()
        d.find_element("id", "compare-button").click()
        wait_for(lambda: "/ui/compare" in d.current_url, what="the compare page")
        wait_for(lambda: d.execute_script("return !!window.tsCharts && !!tsCharts.compare;"), what="the overlay")
        data = d.execute_script("return tsCharts.compare.data.map(s => s.filter(v => v !== null).length);")
        assert data == [40, 40, 8, 40, 8]          # steps; per run: train loss, validation loss
        diff = d.execute_script("return Array.from(document.querySelectorAll('#config-diff th'))"
                                ".map(t => t.textContent);")
        assert "train.lr" in diff
        shoot(d, "compare", shots)
        assert not js_errors(d)
        d.get("about:blank")                       # close the live streams before the server stops
    for name in ("login", "runs", "run", "compare"):
        png = (shots / f"dashboard-{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 400_000, name
