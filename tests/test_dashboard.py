"""The web dashboard (`/ui`): pages, the live metrics stream, sign-in on every route, CSRF, safe downloads, --no-ui."""
from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from tunesmith.serve import ServeSettings
from tunesmith.serve.app import create_app
from tunesmith.serve.dashboard import data as dash_data
from tunesmith.serve.dashboard.security import CSRF_HEADER, KEY_COOKIE, SESSION_COOKIE

KEY = "sk-dashboard-test-0123"

# ---- runs on disk, in tunesmith's run format (written directly: the pipeline takes ~40 s) ---------------------


def write_metrics(path: Path, steps: range, *, lr: float = 1e-3, eval_every: int = 5) -> None:
    """Training records for ``steps`` (loss falling faster with a larger ``lr``), validation every ``eval_every``."""
    with open(path, "a", encoding="utf-8") as f:
        for s in steps:
            loss = 0.3 + 2.7 * math.exp(-s * lr * 100) * (1 + 0.04 * math.sin(s))
            f.write(json.dumps({"type": "train", "step": s, "loss": loss, "lr": lr, "grad_norm": 1.0 + 1.0 / s,
                                "tokens": 256, "tokens_per_s": 500.0 + s, "epoch": s / 10}) + "\n")
            if s % eval_every == 0:
                f.write(json.dumps({"type": "eval", "step": s, "val_loss": loss * 1.1 + 0.05, "perplexity": 2.0})
                        + "\n")


def make_run(root: Path, name: str, *, lr: float = 1e-3, steps: int = 20, finished: bool = True,
             created: str = "2026-11-30T10:00:00", method: str = "lora") -> Path:
    """A run directory as `tunesmith run` leaves it: recipe, run record, metrics, train.json, eval summary,
    report and exported adapter (``finished=False``: prepared and training, no train stage yet)."""
    path = root / name
    (path / "eval").mkdir(parents=True)
    recipe = {"name": name.rsplit("-", 1)[0], "task": "classification", "output_dir": str(root),
              "model": {"name": "/models/tiny-llama"}, "method": {"name": method, "r": 4, "alpha": 8},
              "objective": {"name": "sft"}, "train": {"epochs": 2, "batch_size": 4, "lr": lr, "grad_accum": 1}}
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    stages = {"prepare": {"finished": created, "counts": {"train": 40, "validation": 5, "test": 10}}}
    write_metrics(path / "metrics.jsonl", range(1, steps + 1), lr=lr)
    if finished:
        stages["train"] = {"finished": created, "steps": steps, "wall_s": 12.5}
        stages["eval"] = {"finished": created}
        stages["run"] = {"finished": created, "wall_s": 30.0}
        (path / "train.json").write_text(json.dumps({"steps": steps, "total_steps": steps, "wall_s": 12.5,
                                                     "tokens_per_s": 510.0, "best_step": steps,
                                                     "best_val_loss": 0.4, "final_train_loss": 0.35}))
        (path / "eval" / "summary.json").write_text(json.dumps(
            {"base": {"metrics": {"accuracy": 0.45}}, "tuned": {"metrics": {"accuracy": 0.5 + lr * 100}}}))
        (path / "eval" / "report_data.json").write_text(json.dumps(
            {"metrics": {"base": {"accuracy": 0.45}, "tuned": {"accuracy": 0.5 + lr * 100}}}))
        (path / "report.html").write_text("<!doctype html><h1>Evaluation report</h1><table class='systems'>"
                                          "<tr><td>fine-tuned</td></tr></table>")
        (path / "export" / "adapter").mkdir(parents=True)
        (path / "export" / "adapter" / "adapter_config.json").write_text('{"r": 4}')
    (path / "run.json").write_text(json.dumps({"created": created, "versions": {}, "stages": stages}))
    return path


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "alpha-001", lr=1e-3, created="2026-11-30T10:00:00")
    make_run(root, "beta-001", lr=2e-3, created="2026-11-30T11:00:00")
    (tmp_path / "secret.txt").write_text("outside the run")
    return root


def make_client(root: Path, *, keys=(), ui: bool = True, routers=()) -> TestClient:
    settings = ServeSettings(model="tiny-model-not-loaded", runs=[root], api_keys=list(keys), ui=ui)
    return TestClient(create_app(settings, routers=routers))


def sign_in(client: TestClient, key: str = KEY):
    page = client.get("/ui/login")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    return client.post("/ui/login", data={"key": key, "csrf_token": token, "next": "/ui/"}, follow_redirects=False)


def csrf_of(html: str) -> str:
    return html.split('<meta name="csrf-token" content="')[1].split('"')[0]


# ---- pages ----------------------------------------------------------------------------------------------------

def test_pages_render_runs_run_report_compare(runs_root):
    with make_client(runs_root) as c:
        page = c.get("/ui/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        body = page.text
        assert body.index("beta-001") < body.index("alpha-001")          # newest first
        assert 'href="/ui/run/alpha-001"' in body and "accuracy" in body and "0.45 → <b>0.6</b>" in body
        assert "tiny-llama" in body and "lora" in body and "classification" in body and "12s" in body

        run = c.get("/ui/run/alpha-001").text
        assert 'data-stream="/ui/run/alpha-001/stream"' in run and 'data-planned="20"' in run
        assert 'src="/ui/run/alpha-001/report"' in run and "lr: 0.001" in run           # report + recipe
        assert 'href="/ui/run/alpha-001/files/export/adapter/adapter_config.json"' in run
        assert "/ui/static/vendor/uPlot.iife.min.js" in run
        report = c.get("/ui/run/alpha-001/report")
        assert report.status_code == 200 and "Evaluation report" in report.text
        assert report.headers["content-security-policy"].startswith("sandbox")

        cmp = c.get("/ui/compare", params=[("run", "alpha-001"), ("run", "beta-001")])
        assert cmp.status_code == 200
        assert "<th>train.lr</th>" in cmp.text and "tuned.accuracy" in cmp.text
        series = json.loads(cmp.text.split('<script type="application/json" id="compare-data">')[1].split("</script>")[0])
        assert [s["name"] for s in series] == ["alpha-001", "beta-001"]
        assert len(series[0]["train"]) == 20 and len(series[0]["val"]) == 4

        assert c.get("/ui/compare", params={"run": "alpha-001"}).status_code == 400
        assert c.get("/ui/run/nope-001").status_code == 404
        assert c.get("/", follow_redirects=False).headers["location"] == "/ui/"
        for asset in ("vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "vendor/uPlot.LICENSE", "run.js",
                      "dashboard.js", "compare.js", "dashboard.css"):
            assert c.get(f"/ui/static/{asset}").status_code == 200, asset


def test_a_new_run_appears_without_restart_and_running_status(runs_root):
    with make_client(runs_root) as c:
        assert "gamma-001" not in c.get("/ui/runs/rows").text
        make_run(runs_root, "gamma-001", steps=3, finished=False)          # as if started from the CLI now
        rows = c.get("/ui/runs/rows").text
        assert 'href="/ui/run/gamma-001"' in rows and "s-running" in rows
        # a job's run one folder down (--jobs-runs runs/jobs) and a sweep trial are found too
        make_run(runs_root / "jobs", "ftjob-abc123-001")
        make_run(runs_root / "lr-sweep" / "trials", "lr-003")
        refs = dash_data.discover([runs_root])
        assert {"jobs~ftjob-abc123-001", "lr-sweep~trials~lr-003"} <= set(refs)
        assert dash_data.job_run_ids(refs) == {"ftjob-abc123": "jobs~ftjob-abc123-001"}
        assert c.get("/ui/run/lr-sweep~trials~lr-003").status_code == 200
        # planned steps before train.json exists: ceil(40 / 4) * 2 epochs
        assert 'data-planned="20"' in c.get("/ui/run/gamma-001").text


# ---- the metrics stream -------------------------------------------------------------------------------------

def sse_events(text: str) -> list[dict]:
    out = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                k, _, v = line.partition(":")
                fields[k] = v.lstrip(" ")
        if "event" in fields:
            out.append(fields)
    return out


def test_stream_sends_existing_then_appended_records(runs_root, monkeypatch):
    metrics = runs_root / "alpha-001" / "metrics.jsonl"
    size = metrics.stat().st_size
    first_read = threading.Event()
    read_new = dash_data.read_new

    def watched(path, offset):
        try:
            return read_new(path, offset)
        finally:
            first_read.set()
    monkeypatch.setattr(dash_data, "read_new", watched)

    def append_later():
        assert first_read.wait(30)                              # the stream has sent what was there
        time.sleep(0.1)
        with open(metrics, "a") as f:
            f.write(json.dumps({"type": "train", "step": 21, "loss": 0.1}) + "\n")
            f.write('{"type": "train", "step": 22, "lo')            # torn: not sent until its newline
    with make_client(runs_root) as c:
        writer = threading.Thread(target=append_later)
        writer.start()
        r = c.get("/ui/run/alpha-001/stream", params={"max_s": 1.6})
        writer.join()
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in sse_events(r.text) if e["event"] == "records"]
        assert len(events) == 2
        first, second = (json.loads(e["data"]) for e in events)
        assert len(first) == 24 and int(events[0]["id"]) == size
        assert second == [{"type": "train", "step": 21, "loss": 0.1}]
        offset = int(events[1]["id"])
        # reconnecting with Last-Event-ID continues after what was received; the completed line arrives
        with open(metrics, "a") as f:
            f.write('ss": 0.2}\n')
        again = c.get("/ui/run/alpha-001/stream", params={"max_s": 0.1}, headers={"Last-Event-ID": str(offset)})
        assert [json.loads(e["data"]) for e in sse_events(again.text)] == [[{"type": "train", "step": 22, "loss": 0.2}]]
        # a rewritten (shorter) file, as a resume leaves it: a reset, then everything from the start
        metrics.write_text(json.dumps({"type": "train", "step": 1, "loss": 9.0}) + "\n")
        reset = sse_events(c.get("/ui/run/alpha-001/stream", params={"max_s": 0.1},
                                 headers={"Last-Event-ID": str(offset)}).text)
        assert [e["event"] for e in reset] == ["reset", "records"] and json.loads(reset[1]["data"])[0]["loss"] == 9.0


# ---- security ---------------------------------------------------------------------------------------------------

PARAMS = {"rid": "alpha-001", "rel": "run.json", "job_id": "ftjob-abc123", "action": "cancel"}


def dashboard_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every dashboard route (the ``/ui`` mount's routes, path parameters filled in),
    its static files excepted."""
    from starlette.routing import Mount
    mounts = [r for r in app.routes if isinstance(r, Mount) and r.path == "/ui"]
    assert len(mounts) == 1
    out = []
    for route in mounts[0].routes:
        if isinstance(route, Mount):
            assert route.path == "/static", f"unexpected mount {route.path} in the dashboard"
            continue
        if route.path in ("/docs", "/redoc", "/openapi.json"):
            raise AssertionError(f"the dashboard app exposes {route.path}")
        for method in sorted(route.methods - {"HEAD"}):
            url = "/ui" + route.path
            for name, value in PARAMS.items():
                url = url.replace(f"{{{name}}}", value).replace(f"{{{name}:path}}", value)
            assert "{" not in url, f"no test value for a parameter of {route.path}"
            out.append((method, url))
    return out


def test_every_dashboard_route_refuses_unauthenticated_requests(runs_root):
    with make_client(runs_root, keys=[KEY]) as c:
        routes = dashboard_routes(c.app)
        paths = {p for _, p in routes}
        assert {"/ui/", "/ui/runs/rows", "/ui/run/alpha-001", "/ui/run/alpha-001/stream", "/ui/run/alpha-001/report",
                "/ui/run/alpha-001/files/run.json", "/ui/compare", "/ui/jobs/ftjob-abc123/cancel", "/ui/logout",
                "/ui/login"} <= paths
        for cookies in ({}, {KEY_COOKIE: "sk-wrong-key-000000"}):
            c.cookies.clear()
            for name, value in cookies.items():
                c.cookies.set(name, value)
            for method, path in routes:
                if path == "/ui/login":
                    continue
                r = c.request(method, path, params={"max_s": 0.1} if path.endswith("/stream") else None,
                              follow_redirects=False)
                if r.status_code == 303:
                    assert r.headers["location"].startswith("/ui/login?next="), (method, path)
                else:
                    assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
                assert "alpha-001" not in r.text and "Evaluation report" not in r.text, (method, path)
        # the login page: a wrong key is refused, the right one opens every page
        c.cookies.clear()
        assert sign_in(c, "sk-wrong-key-000000").status_code == 401
        ok = sign_in(c)
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/"
        cookie = ok.headers.get_list("set-cookie")
        for name in (KEY_COOKIE, SESSION_COOKIE):
            assert any(h.startswith(f"{name}=") and "HttpOnly" in h and "SameSite=strict" in h for h in cookie), name
        for method, path in routes:
            if method == "GET" and path != "/ui/compare":
                r = c.get(path, params={"max_s": 0.1} if path.endswith("/stream") else None, follow_redirects=False)
                assert r.status_code == 200, (path, r.status_code)
        # the static files need no key (the vendored chart library, CSS and JS only)
        c.cookies.clear()
        assert c.get("/ui/static/vendor/uPlot.iife.min.js").status_code == 200
        # and the API itself still wants the bearer key, not the cookie
        c.cookies.set(KEY_COOKIE, KEY)
        assert c.get("/v1/models").status_code == 401


def test_post_needs_the_csrf_token_of_the_session(runs_root):
    with make_client(runs_root, keys=[KEY]) as c:
        login = c.get("/ui/login")
        assert c.post("/ui/login", data={"key": KEY, "next": "/ui/"}, follow_redirects=False).status_code == 403
        assert c.post("/ui/login", data={"key": KEY, "csrf_token": "0" * 64}, follow_redirects=False).status_code == 403
        assert sign_in(c).status_code == 303
        token = csrf_of(c.get("/ui/").text)
        assert token != csrf_of(login.text)                    # signing in starts a new session
        assert c.post("/ui/logout", follow_redirects=False).status_code == 403
        assert c.post("/ui/logout", headers={CSRF_HEADER: csrf_of(login.text)}, follow_redirects=False).status_code == 403
        other = make_client(runs_root, keys=[KEY])             # a token from another session does not fit this one
        with other:
            sign_in(other)
            foreign = csrf_of(other.get("/ui/").text)
        assert c.post("/ui/logout", data={"csrf_token": foreign}, follow_redirects=False).status_code == 403
        out = c.post("/ui/logout", data={"csrf_token": token}, follow_redirects=False)
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        assert c.get("/ui/", follow_redirects=False).status_code == 303    # signed out
        # open redirects are not followed after sign-in
        sign_in(c)
        page = c.get("/ui/login")
        t = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        r = c.post("/ui/login", data={"key": KEY, "csrf_token": t, "next": "//evil.example/"}, follow_redirects=False)
        assert r.headers["location"] == "/ui/"


@pytest.mark.parametrize("rel", ["../secret.txt", "..%2Fsecret.txt", "%2E%2E/secret.txt", "export/../../secret.txt",
                                 "%2Fetc%2Fpasswd", "link.txt", "export", "missing.json"])
def test_artifact_download_stays_inside_the_run(runs_root, rel):
    (runs_root / "alpha-001" / "link.txt").symlink_to(runs_root.parent / "secret.txt")
    with make_client(runs_root) as c:
        ok = c.get("/ui/run/alpha-001/files/export/adapter/adapter_config.json")
        assert ok.status_code == 200 and ok.json() == {"r": 4} and "attachment" in ok.headers["content-disposition"]
        r = c.get(f"/ui/run/alpha-001/files/{rel}")
        assert r.status_code == 404 and "outside the run" not in r.text
    assert dash_data.safe_file(runs_root / "alpha-001", rel.replace("%2F", "/").replace("%2E", ".")) is None


def test_no_ui_removes_the_dashboard(runs_root):
    with make_client(runs_root, ui=False) as c:
        assert not [r for r in c.app.routes if getattr(r, "path", "").startswith("/ui")]
        assert c.get("/ui/").status_code == 404 and c.get("/", follow_redirects=False).status_code == 404
        assert c.get("/health").status_code == 200


# ---- fine-tuning jobs ---------------------------------------------------------------------------------------------

def test_jobs_listed_and_stopped_through_the_jobs_api(runs_root, tmp_path):
    from tunesmith.jobs.app import JobsParts
    from tunesmith.jobs.settings import JobsSettings
    settings = JobsSettings(db_url=f"sqlite:///{tmp_path / 'jobs.db'}", files_dir=tmp_path / "files",
                            template={"train": {"batch_size": 4}}, models={"tiny": "/models/tiny-llama"})
    parts = JobsParts(settings)
    with make_client(runs_root, keys=[KEY], routers=parts.routers) as c:
        bearer = {"authorization": f"Bearer {KEY}"}
        rows = "".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                                {"role": "assistant", "content": "hello"}]}) + "\n" for i in range(12))
        file_id = c.post("/v1/files", files={"file": ("t.jsonl", rows.encode(), "application/jsonl")},
                         data={"purpose": "fine-tune"}, headers=bearer).json()["id"]
        job = c.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id}, headers=bearer).json()
        make_run(runs_root / "jobs", f"{job['id']}-001", finished=False)
        sign_in(c)
        page = c.get("/ui/").text
        assert f'data-job="{job["id"]}"' in page and 'data-action="cancel"' in page
        assert f'href="/ui/run/jobs~{job["id"]}-001"' in page
        run_page = c.get(f"/ui/run/jobs~{job['id']}-001").text
        assert "Fine-tuning job" in run_page and 'data-action="cancel"' in run_page
        token = csrf_of(page)
        url = f"/ui/jobs/{job['id']}"
        assert c.post(f"{url}/cancel").status_code == 403                       # no CSRF token
        paused = c.post(f"{url}/pause", headers={CSRF_HEADER: token})           # the API's own answer
        assert paused.status_code == 400 and "validating_files" in paused.json()["error"]["message"]
        assert c.post(f"{url}/explode", headers={CSRF_HEADER: token}).status_code == 404
        done = c.post(f"{url}/cancel", headers={CSRF_HEADER: token})
        assert done.status_code == 200 and done.json()["status"] == "cancelled"
        assert c.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=bearer).json()["status"] == "cancelled"


def test_ui_command_serves_the_runs_folder(runs_root, monkeypatch):
    import inspect

    from tunesmith.cli import main, serve as serve_cli
    options = set(inspect.signature(serve_cli.serve).parameters)
    seen = {}
    monkeypatch.setattr("webbrowser.open", lambda url: pytest.fail("--no-browser opened a browser"))
    monkeypatch.setattr(serve_cli, "serve", lambda **values: seen.update(values))
    assert main(["ui", "--runs", str(runs_root), "--port", "8765", "--no-browser"]) == 0
    assert seen["runs"] == [runs_root] and seen["port"] == 8765 and seen["ui"] is True
    assert set(seen) == options and seen["api_keys"] is None      # every other option at its default
