"""Screenshots of every dashboard page on an existing runs folder, in headless Chromium (the README's images).

    .venv/bin/python bench/dashboard_screenshots.py --runs runs --out docs/screenshots [--model NAME] [--run ID]

Starts the server in-process on a free local port (base model from ``--model`` or the run's recipe, a
generated API key, a throw-away jobs database with no worker: nothing is trained) and saves, as
``dashboard-<page>.png`` (960 px wide, palette-reduced when larger than ``--max-kb``):

- ``login``, ``runs``;
- ``run``: the run's page once its loss curve is drawn from metrics.jsonl (the newest run with metrics,
  or ``--run``);
- ``compare``: that run and the next newest with metrics (only when there are two);
- ``data``: the run's prepared training file (``data/train.jsonl``) validated in the data page;
- ``new``: the new-job form;
- ``playground``: one prompt from the run's test split, side by side: base model and the run's model.

Needs Debian's ``chromium`` and ``chromium-driver`` and selenium (as the browser tests). Prints one JSON
object: the files, their sizes, and any JavaScript console error (exit status 1 if there was one)."""
from __future__ import annotations

import argparse
import io
import json
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,900", "--hide-scrollbars")
WIDTH = 960
PROMPT = "Is this movie review positive or negative?\n\nText: a gorgeous, witty, seductive movie."


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        sys.exit("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


def wait_for(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def save_png(png: bytes, path: Path, max_kb: float) -> int:
    """The viewport shrunk to ``WIDTH`` px; reduced to a 256-colour palette when over ``max_kb``."""
    from PIL import Image
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((WIDTH, round(img.height * WIDTH / img.width)), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    if buf.tell() > max_kb * 1024:
        buf = io.BytesIO()
        img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
    path.write_bytes(buf.getvalue())
    return buf.tell()


def pick_runs(root: Path, wanted: str | None) -> list[Path]:
    """Runs with metrics, ``wanted`` first, then newest first."""
    from tunesmith.rundir import Layout, find_runs
    runs = [p for p in find_runs(root) if Layout(p).metrics_path.is_file()]
    runs.sort(key=lambda p: Layout(p).created(), reverse=True)
    if wanted:
        chosen = [p for p in runs if p.name == wanted]
        if not chosen:
            sys.exit(f"no run {wanted!r} with metrics under {root}")
        runs = chosen + [p for p in runs if p.name != wanted]
    if not runs:
        sys.exit(f"no run with metrics.jsonl under {root}")
    return runs


def run_model(run: Path) -> str:
    import yaml

    from tunesmith.rundir import Layout
    recipe = yaml.safe_load(Layout(run).recipe_path.read_text(encoding="utf-8")) or {}
    name = (recipe.get("model") or {}).get("name")
    if not name:
        sys.exit(f"{run}: the recipe names no model; pass --model")
    return name


def test_prompt(run: Path) -> str:
    """The user turn of the first example of the run's test split (else a fixed movie review)."""
    from tunesmith.rundir import Layout
    try:
        with open(Layout(run).data_dir / "test.jsonl", encoding="utf-8") as f:
            first = json.loads(f.readline())
        return next(m["content"] for m in first["messages"] if m["role"] == "user")
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return PROMPT


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, type=Path, help="runs folder")
    ap.add_argument("--out", required=True, type=Path, help="folder for the PNGs")
    ap.add_argument("--model", help="base model (default: the run's recipe model)")
    ap.add_argument("--run", help="run to show (default: the newest with metrics)")
    ap.add_argument("--max-kb", type=float, default=200.0, help="size above which a PNG is palette-reduced")
    ap.add_argument("--max-tokens", type=int, default=16, help="playground answer length")
    args = ap.parse_args(argv)

    from tunesmith.jobs.app import parts_for_server
    from tunesmith.rundir import Layout
    from tunesmith.serve import ServeSettings
    from tunesmith.serve.app import create_app
    from tunesmith.serve.background import BackgroundServer

    runs = pick_runs(args.runs.resolve(), args.run)
    run = runs[0]
    rid = run.name
    model = args.model or run_model(run)
    args.out.mkdir(parents=True, exist_ok=True)
    key = "sk-shots-" + secrets.token_urlsafe(16)
    shots: dict[str, int] = {}
    errors: list[str] = []

    def shoot(d, name: str) -> None:
        shots[f"dashboard-{name}.png"] = save_png(d.get_screenshot_as_png(), args.out / f"dashboard-{name}.png",
                                                  args.max_kb)
        errors.extend(f"{name}: {e['message']}" for e in d.get_log("browser") if e["level"] == "SEVERE")

    with tempfile.TemporaryDirectory(prefix="tunesmith-shots-") as tmp:
        settings = ServeSettings(model=model, runs=[args.runs.resolve()], api_keys=[key],
                                 batch_wait_ms=0)
        parts = parts_for_server(f"sqlite:///{Path(tmp) / 'jobs.db'}", base_id=settings.base_id, base_model=model,
                                 runs_dir=Path(tmp) / "job-runs", files_dir=Path(tmp) / "files", worker=False)
        app = create_app(settings, sources=parts.sources, routers=parts.routers)
        d = browser()
        try:
            with BackgroundServer(app) as srv:
                d.get(srv.url + "/ui/login?next=/ui/")
                d.find_element("id", "key").send_keys(key)
                shoot(d, "login")
                d.find_element("id", "sign-in").click()
                wait_for(lambda: d.current_url.endswith("/ui/"), what="the runs page")
                wait_for(lambda: d.find_elements("css selector", f'#run-rows tr[data-id="{rid}"]'), what="the runs")
                shoot(d, "runs")

                d.get(f"{srv.url}/ui/run/{rid}")
                points = "return tsCharts.loss ? tsCharts.loss.data[1].filter(v => v !== null).length : 0;"
                steps = sum(1 for r in Layout(run).metrics() if r.get("type") == "train")
                wait_for(lambda: d.execute_script(points) >= max(1, steps), what="the run's loss curve")
                time.sleep(0.3)
                shoot(d, "run")

                if len(runs) > 1:
                    d.get(f"{srv.url}/ui/compare?run={rid}&run={runs[1].name}")
                    wait_for(lambda: d.execute_script("return !!window.tsCharts && !!tsCharts.compare;"),
                             what="the compare chart")
                    time.sleep(0.3)
                    shoot(d, "compare")

                train_file = Layout(run).data_dir / "train.jsonl"
                if train_file.is_file():
                    d.get(srv.url + "/ui/data")
                    d.find_element("id", "data-file").send_keys(str(train_file))
                    d.find_element("id", "data-submit").click()
                    wait_for(lambda: d.find_elements("id", "data-summary") or d.find_elements("id", "data-error"),
                             timeout=300, what="the data report")
                    d.execute_script("var t = document.getElementById('data-summary');"
                                     "if (t && t.previousElementSibling) t.previousElementSibling.scrollIntoView();")
                    shoot(d, "data")

                d.get(srv.url + "/ui/new")
                d.find_element("id", "f-model").send_keys(settings.base_id)
                shoot(d, "new")

                d.get(srv.url + "/ui/playground")
                d.find_element("id", "mode-side").click()
                from selenium.webdriver.support.ui import Select
                options = [o.text for o in Select(d.find_element("id", "side-model-b")).options]
                if rid in options:
                    Select(d.find_element("id", "side-model-b")).select_by_visible_text(rid)
                d.find_element("id", "max-tokens").clear()
                d.find_element("id", "max-tokens").send_keys(str(args.max_tokens))
                d.find_element("id", "side-input").send_keys(test_prompt(run))
                d.find_element("id", "side-send").click()
                both = "return ['a', 'b'].every(p => document.getElementById('answer-' + p).dataset.done === '1');"
                wait_for(lambda: d.execute_script(both), timeout=600, what="both playground answers")
                shoot(d, "playground")
                d.get("about:blank")               # close the live streams before the server stops
        finally:
            d.quit()
    result = {"run": rid, "model": model, "out": str(args.out), "bytes": shots, "js_errors": errors}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["js_errors"] else 0)
