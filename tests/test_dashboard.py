"""The web dashboard (`/ui`): pages, the live metrics stream, sign-in on every route, CSRF, safe downloads, --no-ui."""
from __future__ import annotations

import html as htmllib
import json
import math
import re
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from tunesmith.fsutil import atomic_write_text
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


def make_client(root: Path, *, keys=(), ui: bool = True, routers=(), model: str = "tiny-model-not-loaded",
                **extra) -> TestClient:
    settings = ServeSettings(model=model, runs=[root], api_keys=list(keys), ui=ui, **extra)
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

    def watched(path, offset, version=None):
        try:
            return read_new(path, offset, version)
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
        assert len(first) == 24 and int(events[0]["id"].split("-")[1]) == size
        assert second == [{"type": "train", "step": 21, "loss": 0.1}]
        offset = events[1]["id"]
        # reconnecting with Last-Event-ID continues after what was received; the completed line arrives
        with open(metrics, "a") as f:
            f.write('ss": 0.2}\n')
        again = c.get("/ui/run/alpha-001/stream", params={"max_s": 0.1}, headers={"Last-Event-ID": offset})
        assert [json.loads(e["data"]) for e in sse_events(again.text)] == [[{"type": "train", "step": 22, "loss": 0.2}]]
        # a rewritten (shorter) file, as a resume leaves it: a reset, then everything from the start
        metrics.write_text(json.dumps({"type": "train", "step": 1, "loss": 9.0}) + "\n")
        reset = sse_events(c.get("/ui/run/alpha-001/stream", params={"max_s": 0.1},
                                 headers={"Last-Event-ID": offset}).text)
        assert [e["event"] for e in reset] == ["reset", "records"] and json.loads(reset[1]["data"])[0]["loss"] == 9.0
        # rewritten atomically and regrown past the old offset before the next read (a resumed run that is
        # quick): still a reset, not a read from the middle of the new file
        offset = reset[1]["id"]
        size = metrics.stat().st_size
        atomic_write_text(metrics, "".join(json.dumps({"type": "train", "step": s, "loss": 1.0 / s}) + "\n"
                                           for s in range(1, 30)))
        assert metrics.stat().st_size > size
        regrown = sse_events(c.get("/ui/run/alpha-001/stream", params={"max_s": 0.1},
                                   headers={"Last-Event-ID": offset}).text)
        assert [e["event"] for e in regrown] == ["reset", "records"]
        assert [r["step"] for r in json.loads(regrown[1]["data"])] == list(range(1, 30))
        # a bare byte offset (an older page) continues from there
        with open(metrics, "a") as f:
            f.write(json.dumps({"type": "train", "step": 30, "loss": 0.5}) + "\n")
        bare = sse_events(c.get("/ui/run/alpha-001/stream", params={"max_s": 0.1},
                                headers={"Last-Event-ID": regrown[1]["id"].split("-")[1]}).text)
        assert [json.loads(e["data"]) for e in bare] == [[{"type": "train", "step": 30, "loss": 0.5}]]


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


# ---- data page -------------------------------------------------------------------------------------------------

def chat_line(user: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


def planted_data() -> bytes:
    """Chat examples with a broken JSON line (3), a record without messages (5), a duplicate of line 1 (6)
    and an e-mail address (7)."""
    lines = [chat_line("The movie was wonderful.", "positive"), chat_line("The food was cold.", "negative"),
             '{"messages": [{"role": "user", "content": "torn', chat_line("Great actors.", "positive"),
             json.dumps({"wrong": "shape"}), chat_line("The movie was wonderful.", "positive"),
             chat_line("Mail me at jane.doe@example.com please.", "neutral")]
    return ("\n".join(lines) + "\n").encode()


def upload(c: TestClient, token: str | None, content: bytes, name: str = "train.jsonl", **fields):
    data = {"csrf_token": token, **fields} if token else dict(fields)
    return c.post("/ui/data", files={"file": (name, content, "application/jsonl")}, data=data)


def test_data_page_reports_bad_lines_and_marks_trained_tokens(runs_root, tiny_model_dir):
    with make_client(runs_root, model=str(tiny_model_dir)) as c:
        page = c.get("/ui/data")
        assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.text
        token = csrf_of(page.text)
        assert upload(c, None, planted_data()).status_code == 403                       # CSRF checked
        r = upload(c, token, planted_data())
        assert r.status_code == 200, r.text[:500]
        body = r.text
        errors = body.split('id="data-errors"')[1].split("</table>")[0]
        assert "parse_error" in errors and "line 3:" in errors and "line 5:" in errors
        summary = body.split('id="data-summary"')[1].split("</table>")[0]
        assert "<th>lines</th><td>7</td>" in summary and "<th>invalid</th><td class=\"error\">2</td>" in summary
        dups = body.split('id="data-dups"')[1].split("</table>")[0]
        assert "lines 6=1" in dups and "removed 1 of 5 examples" in dups               # the duplicate pair
        assert "EMAIL" in body.split('id="data-pii"')[1].split("</table>")[0]
        assert 'id="data-tokens"' in body
        # the first batch: ChatML applied, exactly the assistant's answer (+ end of turn) highlighted
        batch = body.split('id="batch"')[1]
        first = batch.split('<div class="example"')[1]
        assert 'data-line="1"' in first
        trained = "".join(htmllib.unescape(t) for t in
                          re.findall(r'<span class="tok trained">(.*?)</span>', first, flags=re.S))
        untrained = "".join(htmllib.unescape(t) for t in
                            re.findall(r'<span class="tok">(.*?)</span>', first, flags=re.S))
        assert trained == "positive<|im_end|>"
        assert "<|im_start|>user\nThe movie was wonderful." in untrained and "assistant" in untrained
        assert batch.count('<div class="example"') == 5                                  # the valid lines
        last = htmllib.unescape(re.sub(r"<[^>]+>", "", batch.split('<div class="example"')[5]))
        assert "<EMAIL>" in last and "jane.doe" not in last                # cleaned as training data is
        assert "/tmp" not in body.split('id="data-error"')[0].split("<h2>")[1][:200]    # shown by its name
        # a file with an unsupported name, and no file at all: one line each
        bad = upload(c, token, b"x", name="notes.txt")
        assert bad.status_code == 400 and "unsupported data file" in bad.text
        none = c.post("/ui/data", data={"csrf_token": token})
        assert none.status_code == 400 and "choose a data file" in none.text


def test_data_upload_is_size_limited(runs_root, tiny_model_dir, monkeypatch):
    from tunesmith.serve.dashboard import tools
    monkeypatch.setattr(tools, "UPLOAD_MAX_BYTES", 2000)
    with make_client(runs_root, model=str(tiny_model_dir)) as c:
        token = csrf_of(c.get("/ui/data").text)
        big = (chat_line("hello " * 20, "hi") + "\n").encode() * 30
        r = upload(c, token, big)
        assert r.status_code == 413 and "upload limit" in r.text
        assert upload(c, token, planted_data()).status_code == 200          # under the limit: checked
    assert not list(Path(tempfile.gettempdir()).glob("tunesmith-dashboard-*/data-*"))


def test_data_page_uses_a_runs_recipe(tmp_path, tiny_model_dir):
    from tiny import tiny_recipe, write_sentiment
    root = tmp_path / "runs"
    run = make_run(root, "cls-001")
    recipe = tiny_recipe(tmp_path, tiny_model_dir, write_sentiment(tmp_path / "s.jsonl"))
    (run / "recipe.yaml").write_text(recipe.read_text())
    rows = b"".join(json.dumps(r).encode() + b"\n" for r in [{"text": "wonderful great", "label": 1},
                                                              {"text": "cold bland", "label": 0},
                                                              {"text": "no label here"}])
    with make_client(root) as c:                       # the server's own model is not even loadable
        token = csrf_of(c.get("/ui/data").text)
        r = upload(c, token, rows, run="cls-001")
        assert r.status_code == 200, r.text[:400]
        labels = r.text.split('id="data-labels"')[1].split("</table>")[0]
        assert "positive" in labels and "negative" in labels
        assert "line 3:" in r.text.split('id="data-errors"')[1]
        shown = re.sub(r"<[^>]+>", "", r.text.split('id="batch"')[1])
        assert "Is this positive or negative?" in shown                                  # the recipe's instruction
        assert upload(c, token, rows, run="nope-001").status_code == 404


# ---- new job page ------------------------------------------------------------------------------------------------

def jobs_parts(tmp_path):
    from tunesmith.jobs.app import JobsParts
    from tunesmith.jobs.settings import JobsSettings
    return JobsParts(JobsSettings(db_url=f"sqlite:///{tmp_path / 'jobs.db'}", files_dir=tmp_path / "files",
                                  template={"train": {"batch_size": 4}}, models={"tiny": "/models/tiny-llama"}))


def test_new_job_form_submits_through_the_jobs_api_with_its_messages(runs_root, tmp_path, tiny_model_dir):
    parts = jobs_parts(tmp_path)
    with make_client(runs_root, keys=[KEY], routers=parts.routers, model=str(tiny_model_dir)) as c:
        bearer = {"authorization": f"Bearer {KEY}"}
        rows = "".join(chat_line(f"hi {i}", "hello") + "\n" for i in range(12))
        file_id = c.post("/v1/files", files={"file": ("t.jsonl", rows.encode(), "application/jsonl")},
                         data={"purpose": "fine-tune"}, headers=bearer).json()["id"]
        sign_in(c)
        page = c.get("/ui/new")
        assert page.status_code == 200
        for name in ("model", "training_file", "validation_file", "method", "n_epochs", "batch_size",
                     "learning_rate_multiplier", "beta", "suffix", "seed"):
            assert f'name="{name}"' in page.text, name
        assert "Passes over the training data." in page.text and 'max="50"' in page.text   # pydantic description
        assert f'<option value="{file_id}">t.jsonl</option>' in page.text
        token = csrf_of(page.text)
        form = {"model": "tiny", "training_file": file_id, "method": "supervised", "n_epochs": "0"}
        assert c.post("/ui/new", data=form).status_code == 403
        bad = c.post("/ui/new", data={**form, "csrf_token": token})
        api = c.post("/v1/fine_tuning/jobs", headers=bearer, json={
            "model": "tiny", "training_file": file_id,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}})
        assert api.status_code == 400 and bad.status_code == 400
        message = api.json()["error"]["message"]
        assert "n_epochs" in message
        assert htmllib.unescape(bad.text.split('id="job-error">')[1].split("</p>")[0]) == message
        assert 'value="0"' in bad.text                                                    # the values are kept
        weird = c.post("/ui/new", data={**form, "n_epochs": "many", "csrf_token": token})
        assert weird.status_code == 400 and "many" in weird.text
        ok = c.post("/ui/new", data={**form, "n_epochs": "2", "batch_size": "4", "suffix": "ui", "seed": "7",
                                     "csrf_token": token})
        assert ok.status_code == 200, ok.text[:300]
        job_id = ok.text.split('id="job-created">Created fine-tuning job <b>')[1].split("</b>")[0]
        job = c.get(f"/v1/fine_tuning/jobs/{job_id}", headers=bearer).json()
        assert job["hyperparameters"]["n_epochs"] == 2 and job["seed"] == 7 and job["user_provided_suffix"] == "ui"
        # the data page offers the jobs API's files and validates one of them
        data_page = c.get("/ui/data").text
        assert f'<option value="{file_id}">t.jsonl' in data_page
        picked = c.post("/ui/data", data={"file_id": file_id, "csrf_token": token})
        assert picked.status_code == 200 and "<th>lines</th><td>12</td>" in picked.text


def test_recipe_check_shows_one_line_or_the_resolved_recipe(runs_root, tmp_path):
    data_file = tmp_path / "t.jsonl"
    data_file.write_text(chat_line("hi", "hello") + "\n")
    with make_client(runs_root) as c:
        page = c.get("/ui/new").text
        assert 'id="jobs-off"' in page and "not submitted" in page
        token = csrf_of(page)
        good = f"model: {{name: /models/tiny}}\ndata: {{train: {data_file}}}\ntrain: {{lr: 0.001}}\n"
        assert c.post("/ui/recipe/check", data={"recipe": good}).status_code == 403
        ok = c.post("/ui/recipe/check", data={"recipe": good, "csrf_token": token})
        assert ok.status_code == 200
        resolved = yaml.safe_load(htmllib.unescape(ok.text.split('id="recipe-resolved">')[1].split("</pre>")[0]))
        assert resolved["train"]["lr"] == 0.001 and resolved["train"]["batch_size"] == 8
        bad = c.post("/ui/recipe/check", data={"recipe": good.replace("lr: 0.001", "lr: 5"), "csrf_token": token})
        line = bad.text.split('id="recipe-error">')[1].split("</p>")[0]
        assert bad.status_code == 400 and "train.lr" in line and "\n" not in line and "data-" not in line
        typo = c.post("/ui/recipe/check", data={"recipe": good + "trian: {}\n", "csrf_token": token})
        assert typo.status_code == 400 and "trian" in typo.text
        assert c.post("/ui/new", data={"model": "x", "csrf_token": token}).status_code == 400   # no jobs API


# ---- playground ----------------------------------------------------------------------------------------------------

def test_playground_proxy_streams_with_the_sessions_key(runs_root, tiny_model_dir):
    with make_client(runs_root, keys=[KEY], model=str(tiny_model_dir), model_id="tiny-base",
                     batch_wait_ms=0) as c:
        body = {"model": "tiny-base", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        assert c.post("/ui/playground/chat", json=body).status_code == 401               # no cookie
        sign_in(c)
        page = c.get("/ui/playground")
        assert page.status_code == 200 and '<option selected>tiny-base</option>' in page.text
        assert KEY not in page.text                                                         # the key stays server-side
        token = csrf_of(page.text)
        assert c.post("/ui/playground/chat", json=body).status_code == 403               # no CSRF token
        r = c.post("/ui/playground/chat", json=body, headers={CSRF_HEADER: token})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
        assert text and chunks[-1]["usage"]["completion_tokens"] == 5 and r.text.rstrip().endswith("[DONE]")
        # the same request straight to the API without the key is refused: the proxy added it
        assert c.post("/v1/chat/completions", json=body).status_code == 401
        plain = c.post("/ui/playground/chat", json={**body, "stream": False, "stream_options": None},
                       headers={CSRF_HEADER: token})
        assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"]
        # the API's own errors come back as they are
        missing = c.post("/ui/playground/chat", json={**body, "model": "nope"}, headers={CSRF_HEADER: token})
        assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
        assert c.post("/ui/playground/chat", content=b"[1]", headers={CSRF_HEADER: token,
                                                                      "content-type": "application/json"}).status_code == 400
