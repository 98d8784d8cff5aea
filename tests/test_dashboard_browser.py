"""The dashboard in headless Chromium against a real uvicorn server: sign in, runs list, live curves, compare;
data, new job, playground; and a job launched from the form, trained by a real worker on the tiny model
(live curve, pause, resume, report, compare, side-by-side chat).

Fails on any JavaScript console error. With ``TUNESMITH_SCREENSHOTS=1`` the pages are saved as PNGs in
docs/screenshots/ (for the README); otherwise into the test's temporary folder.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from jobs_util import TEMPLATE, chat_rows, jsonl
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
    """Console messages of level SEVERE (uncaught errors, failed loads) since the last call. A metrics stream
    (server-sent events) cut while the page was left is not one: EventSource reconnects by design."""
    return [f"{e['level']}: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"
            and not ("/stream " in e["message"] and "ERR_INCOMPLETE_CHUNKED_ENCODING" in e["message"])]


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
        points = "return window.tsCharts && tsCharts.loss ? tsCharts.loss.data[0].length : 0;"
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
        # the task-metric chart stays hidden until a validation carries the metric that chooses the checkpoint
        hidden = "return document.getElementById('chart-task').hidden;"
        assert d.execute_script(hidden) is True
        with open(live / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"type": "eval", "step": 15, "val_loss": 0.9, "perplexity": 2.4,
                                "task_metric": 0.75, "task_metric_name": "accuracy"}) + "\n")
        wait_for(lambda: d.execute_script("return tsCharts.task.data[1].filter(v => v !== null);") == [0.75],
                 what="the validation task metric on its chart")
        assert d.execute_script(hidden) is False and d.execute_script(points) == 15
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


def servable_run(root: Path, model_dir: Path, name: str, seed: int) -> Path:
    """A run the server can serve: a recipe on the tiny base model and a merged export (another random tiny
    model, so its answers differ from the base model's)."""
    from tiny import make_model, make_tokenizer, tiny_recipe, write_sentiment
    path = make_run(root, name)
    recipe = tiny_recipe(path, model_dir, write_sentiment(path / "sentiment.jsonl"), method={"name": "full"})
    assert recipe == path / "recipe.yaml"
    merged = path / "export" / "merged"
    tok = make_tokenizer()
    make_model(tok, seed=seed).save_pretrained(merged)
    tok.save_pretrained(merged)
    return path


def test_data_new_job_and_side_by_side_playground(tmp_path, browser, tiny_model_dir):
    shots = DOCS_SHOTS if os.environ.get("TUNESMITH_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "runs"
    servable_run(root, tiny_model_dir, "sentiment-full-001", seed=3)
    from tunesmith.jobs.app import JobsParts
    from tunesmith.jobs.settings import JobsSettings
    jobs = JobsParts(JobsSettings(db_url=f"sqlite:///{tmp_path / 'jobs.db'}", files_dir=tmp_path / "files",
                                  template={"train": {"batch_size": 4}}, models={"tiny": str(tiny_model_dir)}))
    data = tmp_path / "support-chats.jsonl"
    good = [{"messages": [{"role": "system", "content": "You are a helpful assistant."},
                          {"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in [("What is the capital of France?", "The capital of France is Paris."),
                         ("Was the movie good?", "The movie was wonderful and the actors were great."),
                         ("How was the food?", "It was cold and bland."),
                         ("Summarise: the quick brown fox jumps over the lazy dog.", "A fox jumps over a dog.")]]
    lines = [json.dumps(good[0]), json.dumps(good[1]), '{"messages": [{"role": "user", "content": "oops"}',
             json.dumps(good[2]), json.dumps({"prompt": "no completion"}), json.dumps(good[3])]
    data.write_text("\n".join(lines) + "\n")
    app = create_app(ServeSettings(model=str(tiny_model_dir), model_id="tiny-base", runs=[root], api_keys=[KEY],
                                   batch_wait_ms=0), routers=jobs.routers)
    with BackgroundServer(app) as srv:
        d = browser
        d.delete_all_cookies()
        d.get(srv.url + "/ui/login?next=/ui/data")
        d.find_element("id", "key").send_keys(KEY)
        d.find_element("id", "sign-in").click()
        wait_for(lambda: d.current_url.endswith("/ui/data") and d.find_elements("id", "data-file"),
                 what="the data page after sign-in")
        # data: upload a file with two bad lines; the report names them, the batch marks trained tokens
        d.find_element("id", "data-file").send_keys(str(data))
        d.find_element("id", "data-submit").click()
        wait_for(lambda: d.find_elements("id", "data-errors"), timeout=30, what="the validation report")
        errors = d.find_element("id", "data-errors").text
        assert "line 3:" in errors and "line 5:" in errors
        trained = d.execute_script("return Array.from(document.querySelectorAll('#batch .example')[0]"
                                   ".querySelectorAll('.tok.trained')).map(s => s.textContent).join('');")
        assert trained == "The capital of France is Paris.<|im_end|>"
        assert len(d.find_elements("css selector", "#batch .example")) == 4
        d.execute_script("document.querySelector('#data-summary').previousElementSibling.scrollIntoView();")
        shoot(d, "data", shots)
        assert not js_errors(d)

        # new job: the API's message for a bad value, then a job created from the form
        d.get(srv.url + "/ui/new")
        d.find_element("id", "f-model").send_keys("tiny")
        d.find_element("id", "f-training_file").send_keys("file-nope")
        d.find_element("id", "job-submit").click()
        wait_for(lambda: d.find_elements("id", "job-error"), what="the jobs API's error")
        assert "file-nope" in d.find_element("id", "job-error").text
        assert d.find_element("id", "f-model").get_attribute("value") == "tiny"          # the values are kept
        shoot(d, "new", shots)
        d.find_element("id", "recipe-text").send_keys("model: {name: tiny}\ntrain: {lr: 3}\n")
        d.find_element("id", "recipe-submit").click()
        wait_for(lambda: d.find_elements("id", "recipe-error"), what="the recipe check")
        assert "pasted recipe, field 'data'" in d.find_element("id", "recipe-error").text
        # the two refused forms come back as HTTP 400 pages, which Chromium logs; nothing else may be logged
        logged = js_errors(d)
        assert len(logged) == 2 and all("status of 400" in e for e in logged), logged
        assert "/ui/new " in logged[0] and "/ui/recipe/check " in logged[1], logged

        # playground, side by side: base and the run's model answer the same prompt
        d.get(srv.url + "/ui/playground")
        d.find_element("id", "mode-side").click()
        assert d.find_element("id", "side-model-a").get_attribute("value") == "tiny-base"
        assert d.find_element("id", "side-model-b").get_attribute("value") == "sentiment-full-001"
        d.find_element("id", "side-input").send_keys("Was the movie good?")
        d.find_element("id", "side-send").click()
        done = "return ['a', 'b'].every(p => document.getElementById('answer-' + p).dataset.done === '1');"
        wait_for(lambda: d.execute_script(done), timeout=60, what="both answers")
        for pane in ("a", "b"):
            assert d.find_element("id", f"answer-{pane}").text.strip(), pane
            assert "completion tokens" in d.find_element("id", f"stats-{pane}").text
        shoot(d, "playground", shots)
        assert not js_errors(d)
        d.get("about:blank")
    for name in ("data", "new", "playground"):
        png = (shots / f"dashboard-{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 400_000, name


def test_job_from_form_live_pause_resume_report_compare_chat(tmp_path, browser, tiny_model_dir, monkeypatch):
    """The whole flow on the tiny model with a real worker: create a job in the New job form, watch its live
    curve gain points, pause it (it stops at a checkpoint), resume it, open the finished run's report, compare
    it with a second run, chat side by side with base and tuned. No JavaScript error on any page."""
    import httpx
    from selenium.webdriver.support.ui import Select

    from tunesmith import pipeline
    from tunesmith.jobs.app import parts_for_server
    # the tiny model trains a step in milliseconds: hold it at step 2 until the page watches, then slow it to
    # a human pace so the curve can be seen growing and the pause lands mid-run
    watching, real_run = threading.Event(), pipeline.run

    def paced_run(*args, on_step=None, **kw):
        def step(record):
            if record["step"] == 2:
                watching.wait(60)
            time.sleep(0.25)
            if on_step is not None:
                on_step(record)
        return real_run(*args, on_step=step, **kw)
    monkeypatch.setattr(pipeline, "run", paced_run)

    root = tmp_path / "runs"
    make_run(root, "sentiment-lora-001", lr=1e-3, steps=40, created="2026-11-30T09:00:00")
    template = {**TEMPLATE, "data": {"max_length": 64, "split": {"validation": 0.1, "test": 0.2}},
                "eval": {"max_new_tokens": 4, "batch_size": 8, "compare_base": True}}
    parts = parts_for_server(f"sqlite:///{tmp_path / 'jobs.db'}", base_id="tiny-base", base_model=str(tiny_model_dir),
                             runs_dir=root, template=template, files_dir=tmp_path / "files", poll_s=0.05)
    app = create_app(ServeSettings(model=str(tiny_model_dir), model_id="tiny-base", runs=[root], api_keys=[KEY],
                                   batch_wait_ms=0, default_max_tokens=8), sources=parts.sources, routers=parts.routers)
    t0 = time.monotonic()
    with BackgroundServer(app) as srv, parts.worker_running(), \
            httpx.Client(base_url=srv.url, headers={"authorization": f"Bearer {KEY}"}) as api:
        file_id = api.post("/v1/files", files={"file": ("greetings.jsonl", jsonl(chat_rows(40)), "application/jsonl")},
                           data={"purpose": "fine-tune"}).json()["id"]
        d = browser
        d.delete_all_cookies()
        d.get(srv.url + "/ui/login?next=/ui/new")
        d.find_element("id", "key").send_keys(KEY)
        d.find_element("id", "sign-in").click()
        wait_for(lambda: d.current_url.endswith("/ui/new"), what="the new-job page after sign-in")

        # new job: the uploaded file is offered; 21 training rows (after the template's split) x 3 epochs
        wait_for(lambda: file_id in d.execute_script("return Array.from(document.querySelectorAll('#file-ids option'))"
                                                     ".map(o => o.value);"),
                 what="the uploaded file among the offered files (the page may still be loading when its URL shows)")
        for field, value in (("model", "tiny-base"), ("training_file", file_id), ("n_epochs", "3"),
                             ("batch_size", "4"), ("suffix", "ui")):
            d.find_element("id", f"f-{field}").send_keys(value)
        d.find_element("id", "job-submit").click()
        wait_for(lambda: d.find_elements("id", "job-created"), what="the created job")
        job_id = d.find_element("css selector", "#job-created b").text
        assert job_id.startswith("ftjob-")
        assert not js_errors(d)

        # the runs list links the job to its run as soon as the worker has prepared it
        d.get(srv.url + "/ui/")
        link = f'#job-rows tr[data-job="{job_id}"] a'
        wait_for(lambda: d.find_elements("css selector", link), timeout=30, what="the job's run in the runs list")
        d.find_element("css selector", link).click()
        wait_for(lambda: "/ui/run/ftjob-" in d.current_url, what="the job's run page")
        rid = d.current_url.rsplit("/", 1)[-1]

        # live curve: points arrive while it trains
        points = "return window.tsCharts && tsCharts.loss ? tsCharts.loss.data[1].filter(v => v !== null).length : 0;"
        wait_for(lambda: d.execute_script(points) >= 1, timeout=30, what="the first training step on the chart")
        watching.set()
        seen = d.execute_script(points)
        wait_for(lambda: d.execute_script(points) >= seen + 2, timeout=20, what="the live curve gaining points")
        assert "/ 18" in d.find_element("id", "progress-text").text        # ceil(21 / 4) x 3 epochs planned

        # pause (keep checkpoint): the worker stops at the first step after a checkpoint
        pause = d.find_element("css selector", 'section.job button[data-action="pause"]')
        assert pause.is_displayed()
        pause.click()
        wait_for(lambda: "is now paused" in d.find_element("id", "job-message").text, what="the pause")

        def paused_at():
            for e in api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"]:
                if e["message"].startswith("Job paused at the checkpoint of step"):
                    return int(e["message"].split("step ")[1].split(";")[0])
            return None
        at = wait_for(paused_at, timeout=20, what="the worker to stop at a checkpoint")
        assert at < 18 and at % 3 == 0
        time.sleep(1.0)                                                  # two stream polls: nothing new arrives
        stopped = d.execute_script(points)
        assert at <= stopped <= at + 1 and stopped < 18
        resume = d.find_element("css selector", 'section.job button[data-action="resume"]')
        assert resume.is_displayed() and not pause.is_displayed()

        # resume: it continues from the checkpoint (the replayed step rewrites the stream) to the end
        resume.click()
        wait_for(lambda: "is now queued" in d.find_element("id", "job-message").text, what="the resume")
        wait_for(lambda: d.execute_script(points) == 18, timeout=30, what="all 18 steps on the live chart")
        assert d.execute_script("return tsCharts.loss.data[0].length;") == 18      # no step drawn twice
        val = "return tsCharts.loss.data[2].filter(v => v !== null).length;"
        wait_for(lambda: d.execute_script(val) == 6, what="validation loss every 3 steps")      # after the step
        assert "step 18 / 18 (100%)" in d.find_element("id", "progress-text").text
        done = wait_for(lambda: (j := api.get(f"/v1/fine_tuning/jobs/{job_id}").json())["status"] in
                        ("succeeded", "failed", "cancelled") and j, timeout=60, what="the job to finish")
        assert done["status"] == "succeeded", done.get("error")
        messages = [e["message"] for e in api.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                                                  params={"limit": 100}).json()["data"]]
        assert f"Resuming from checkpoint at step {at}" in messages
        assert not js_errors(d)

        # the finished run's page: the report in its (sandboxed) frame with the systems table, artifacts
        d.get(f"{srv.url}/ui/run/{rid}")
        assert d.find_element("id", "job-status").text == "succeeded"
        assert not any(b.is_displayed() for b in d.find_elements("css selector", "section.job button"))
        wait_for(lambda: d.execute_script(points) == 18, what="the finished run's curve")
        d.switch_to.frame(d.find_element("id", "report"))
        systems = wait_for(lambda: d.execute_script(
            "return Array.from(document.querySelectorAll('table.systems tbody tr')).map(r => r.cells[0].textContent);"),
            what="the report's systems table")
        d.switch_to.default_content()
        assert systems == ["base zero-shot", "fine-tuned"]
        assert "/ui/run/%s/files/metrics.jsonl" % rid in d.execute_script(
            "return Array.from(document.querySelectorAll('#artifacts a')).map(a => a.getAttribute('href'));")
        assert not js_errors(d)

        # compare it with the second run
        d.get(srv.url + "/ui/")
        for r in (rid, "sentiment-lora-001"):
            wait_for(lambda: d.find_elements("css selector", f'#run-rows input[value="{r}"]'), what=f"run {r}")
            d.find_element("css selector", f'#run-rows input[value="{r}"]').click()
        d.find_element("id", "compare-button").click()
        wait_for(lambda: d.execute_script("return !!window.tsCharts && !!tsCharts.compare;"), what="the overlay")
        counts = d.execute_script("return tsCharts.compare.data.slice(1).map(s => s.filter(v => v !== null).length);")
        assert sorted(counts) == sorted([18, 6, 40, 8]), counts         # per run: train loss, validation loss
        assert not js_errors(d)

        # playground, side by side: the base model and the job's fine-tuned model answer one prompt
        d.get(srv.url + "/ui/playground")
        d.find_element("id", "mode-side").click()
        assert d.find_element("id", "side-model-a").get_attribute("value") == "tiny-base"
        options = d.execute_script("return Array.from(document.querySelectorAll('#side-model-b option'))"
                                   ".map(o => o.value);")
        assert done["fine_tuned_model"] in options and rid in options, options      # by its ft: name and its run
        Select(d.find_element("id", "side-model-b")).select_by_visible_text(done["fine_tuned_model"])
        d.find_element("id", "side-input").send_keys("Say hi to number 3")
        d.find_element("id", "side-send").click()
        both = "return ['a', 'b'].every(p => document.getElementById('answer-' + p).dataset.done === '1');"
        wait_for(lambda: d.execute_script(both), timeout=60, what="both answers")
        for pane in ("a", "b"):
            assert "completion tokens" in d.find_element("id", f"stats-{pane}").text, pane
        assert not js_errors(d)
        d.get("about:blank")
    elapsed = time.monotonic() - t0
    assert elapsed < 120, f"the flow took {elapsed:.0f}s"
