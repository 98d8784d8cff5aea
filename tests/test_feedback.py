"""Feedback from production: request logging (PII scrubbed, rotated, concurrent), POST /v1/feedback,
`tunesmith harvest` (-> `continue`) and `tunesmith drift`, on a tiny registered version served by uvicorn."""
from __future__ import annotations

import io
import json
import random
import threading
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from serve_fixtures import tiny_recipe
from tiny import sentiment_rows
from tunesmith.rundir import Layout, read_json, read_jsonl

EMAIL, PHONE = "jane.doe@example.com", "+1 415 555 0134"
RAW_PII = (EMAIL, PHONE, "415 555 0134", "555 0134")
INSTRUCTION = "Is this positive or negative?"
LABELS = {0: "negative", 1: "positive"}


def user_prompt(text: str) -> str:
    """A prompt shaped like the version's labelled training prompts."""
    return f"{INSTRUCTION}\n\nText: {text}\n\nAnswer with one of: negative, positive."


def cli(argv: list[str]) -> tuple[int, str]:
    from tunesmith.cli import main
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def log_text(log_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted(log_dir.glob("*.jsonl")))


@pytest.fixture(scope="module")
def version(tmp_path_factory, tiny_model_dir):
    """``senti@v1`` (champion): a 3-step LoRA run of the tiny model on labelled sentiment data."""
    from tunesmith import pipeline
    from tunesmith.lifecycle import register, set_alias
    root = tmp_path_factory.mktemp("feedback")
    data = root / "sentiment.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(60)))
    runs = root / "runs"
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(io.StringIO()):
        mp.setenv("TUNESMITH_HOME", str(root / "home"))
        run, _ = pipeline.train(tiny_recipe(runs, tiny_model_dir, data, "senti",
                                            eval={"embedding_model": "tfidf"}, tracking={"mlflow": False}))
        v1 = register(run.path, "senti")
        set_alias("senti", "champion", 1, root=runs)
    return {"root": root, "runs": runs, "v1": v1}


@pytest.fixture(scope="module")
def served(version, tiny_model_dir):
    """Chats with planted PII (plain and streamed, by the official openai client against uvicorn), corrections,
    a preference pair, ratings; returns what was sent and the log folder."""
    from tunesmith.serve import create_app
    from tunesmith.serve.background import BackgroundServer
    from tunesmith.serve.settings import ServeSettings
    log_dir = version["root"] / "logs"
    settings = ServeSettings(model=str(tiny_model_dir), model_id="tiny-base", runs=[version["runs"]], api_keys=[],
                             batch_wait_ms=0, default_max_tokens=4, log_dir=log_dir, ui=False)
    train = read_jsonl(Layout(version["v1"].run_dir).data_dir / "train.jsonl")
    out: dict = {"log_dir": log_dir, "feedback": []}
    with BackgroundServer(create_app(settings)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        http = httpx.Client(base_url=srv.url, timeout=60)

        def chat(content: str, model: str = "senti@champion", stream: bool = False) -> str:
            messages = [{"role": "user", "content": content}]
            if not stream:
                return client.chat.completions.create(model=model, messages=messages, max_tokens=4).id
            chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=4, stream=True))
            return chunks[0].id

        def feedback(**body) -> httpx.Response:
            r = http.post("/v1/feedback", json=body)
            out["feedback"].append(r)
            return r

        pii = f"Contact {EMAIL} or {PHONE}: the movie was wonderful"
        out["pii_id"] = chat(user_prompt(pii))
        out["stream_id"] = chat(user_prompt(f"call {PHONE} now, the food was cold"), model="senti@v1", stream=True)
        assert feedback(response_id=out["pii_id"], correction="positive").status_code == 200
        r = feedback(response_id=out["stream_id"], preferred=f"negative (write to {EMAIL})", rejected="positive")
        out["pref"] = r.json()
        # new prompts with label corrections (12: enough for the continuation to infer the label set)
        for row in sentiment_rows(12, seed=5):
            rid = chat(user_prompt(row["text"] + " fresh"))
            assert feedback(response_id=rid, correction=LABELS[row["label"]], rating="down").status_code == 200
        # a correction that repeats a training example, and the same new correction twice
        ex = train[0]
        prompt = [m for m in ex["messages"] if m["role"] == "user"][-1]["content"]
        rid = chat(prompt)
        feedback(response_id=rid, correction=[m for m in ex["messages"] if m["role"] == "assistant"][-1]["content"])
        for _ in range(2):
            rid = chat(user_prompt("the dog was great great twice"))
            feedback(response_id=rid, correction="positive")
        out["rating_only"] = feedback(response_id=rid, rating="up")
        out["base_id"] = chat("hello there", model="tiny-base")
        # bad feedback
        out["unknown"] = http.post("/v1/feedback", json={"response_id": "chatcmpl-nosuch", "rating": "up"})
        out["bad_rating"] = http.post("/v1/feedback", json={"response_id": rid, "rating": "meh"})
        out["half_pair"] = http.post("/v1/feedback", json={"response_id": rid, "preferred": "positive"})
        out["extra"] = http.post("/v1/feedback", json={"response_id": rid, "rating": "up", "stars": 5})
        out["empty"] = http.post("/v1/feedback", json={"response_id": rid})
        http.close()
    return out


# ---- logging --------------------------------------------------------------------------------------------------

def test_requests_are_logged_with_versions_and_no_raw_pii(served, version):
    log_dir = served["log_dir"]
    text = log_text(log_dir)
    for raw in RAW_PII:
        assert raw not in text
    recs = {r["id"]: r for r in read_jsonl(log_dir / "requests.jsonl")}
    assert len(recs) == 2 + 12 + 1 + 2 + 1
    plain, streamed = recs[served["pii_id"]], recs[served["stream_id"]]
    assert plain["model"] == "senti@champion" and plain["version"] == "senti@v1" and plain["name"] == "senti"
    assert Path(plain["run_dir"]) == version["v1"].run_dir and plain["stream"] is False
    assert "Contact <EMAIL> or <PHONE>: the movie was wonderful" in plain["messages"][0]["content"]
    assert plain["pii"] == {"EMAIL": 1, "PHONE": 1} and isinstance(plain["answer"], str)
    assert plain["usage"]["completion_tokens"] >= 1 and plain["time"].startswith("20")
    assert streamed["stream"] is True and streamed["model"] == "senti@v1" and "<PHONE>" in streamed["messages"][0]["content"]
    assert streamed["finish_reason"] in ("stop", "length")
    base = recs[served["base_id"]]
    assert base["model"] == "tiny-base" and base["version"] is None and base["run_dir"] is None


def test_feedback_is_stored_scrubbed_and_bad_feedback_is_refused(served):
    assert all(r.status_code == 200 for r in served["feedback"])
    pref = served["pref"]
    assert pref["object"] == "feedback" and pref["id"].startswith("fb-") and pref["response_id"] == served["stream_id"]
    stored = {f["id"]: f for f in read_jsonl(served["log_dir"] / "feedback.jsonl")}
    assert len(stored) == len(served["feedback"])
    rec = stored[pref["id"]]
    assert rec["preferred"] == "negative (write to <EMAIL>)" and rec["rejected"] == "positive"
    assert rec["model"] == "senti@v1" and rec["pii"] == {"EMAIL": 1}
    unknown = served["unknown"]
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "response_not_found"
    assert unknown.json()["error"]["param"] == "response_id"
    for key, param in (("bad_rating", "rating"), ("half_pair", "rejected"), ("extra", "stars"), ("empty", "rating")):
        r = served[key]
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (key, r.text)


def test_feedback_is_off_without_a_log_dir(tiny_model_dir):
    from fastapi.testclient import TestClient

    from tunesmith.serve import create_app
    from tunesmith.serve.settings import ServeSettings
    app = create_app(ServeSettings(model=str(tiny_model_dir), api_keys=[], ui=False))
    r = TestClient(app).post("/v1/feedback", json={"response_id": "chatcmpl-x", "rating": "up"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "feedback_disabled"
    assert "--log-dir" in r.json()["error"]["message"]


def test_rotation_caps_the_log_and_forgets_rotated_ids(tmp_path):
    from tunesmith.serve.requestlog import FeedbackRequest, RequestLog
    from tunesmith.serve.schema import OpenAIError
    log = RequestLog(tmp_path / "logs", max_mb=2048 / 2**20, keep=3)      # 2 KB files, 3 kept
    info = SimpleNamespace(run_dir=None, kind="base")
    ids = []
    for i in range(60):
        resp = {"id": f"chatcmpl-{i}", "model": "senti@champion", "created": 0,
                "choices": [{"message": {"content": f"answer {i} " * 5}, "finish_reason": "stop"}]}
        log.log_chat(resp, [{"role": "user", "content": f"prompt {i} mail {EMAIL} " * 4}], info)
        ids.append(resp["id"])
    files = sorted(p.name for p in (tmp_path / "logs").glob("requests*.jsonl"))
    assert files == ["requests.1.jsonl", "requests.2.jsonl", "requests.jsonl"]
    assert all((tmp_path / "logs" / f).stat().st_size <= 2048 for f in files)
    kept = [r["id"] for f in ("requests.2.jsonl", "requests.1.jsonl", "requests.jsonl")
            for r in read_jsonl(tmp_path / "logs" / f)]
    assert kept == ids[-len(kept):] and 3 < len(kept) < 60          # the newest, in order, oldest dropped
    assert log.known(ids[-1]) == "senti@champion" and log.known(ids[0]) is None
    with pytest.raises(OpenAIError) as e:
        log.add_feedback(FeedbackRequest(response_id=ids[0], rating="up"))
    assert e.value.status == 404
    # a restarted server knows exactly the ids still in the kept files
    again = RequestLog(tmp_path / "logs", max_mb=2048 / 2**20, keep=3)
    assert [i for i in ids if again.known(i)] == kept
    assert EMAIL not in log_text(tmp_path / "logs")


def test_concurrent_appends_never_interleave(tmp_path):
    from tunesmith.serve.requestlog import RequestLog
    log = RequestLog(tmp_path / "logs")
    info = SimpleNamespace(run_dir=None, kind="base")

    def worker(t: int) -> None:
        for i in range(50):
            log.log_chat({"id": f"chatcmpl-{t}-{i}", "model": "m", "created": 0,
                          "choices": [{"message": {"content": "x" * (500 + 37 * t)}, "finish_reason": "stop"}]},
                         [{"role": "user", "content": "y" * 3000}], info)
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recs = read_jsonl(tmp_path / "logs" / "requests.jsonl")
    assert recs.skipped == 0 and len({r["id"] for r in recs}) == 400


# ---- harvest -> continue ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def harvested(served, version):
    out = version["root"] / "harvest" / "senti.jsonl"
    code, text = cli(["harvest", "senti", "--log-dir", str(served["log_dir"]), "--out", str(out),
                      "--root", str(version["runs"])])
    assert code == 0, text
    return {"out": out, "text": text, "summary": read_json(out.with_name("senti.harvest.json"))}


def test_harvest_writes_parseable_deduplicated_files(harvested, served):
    from tunesmith.config import DataConfig
    from tunesmith.data.formats import load_examples_strict
    s, out = harvested["summary"], harvested["out"]
    # 1 PII correction + 12 label corrections + the twice-sent correction once; the training repeat is dropped
    assert s["harvested"] == {"sft": 14, "preference": 1}
    assert s["duplicates"]["count"] == 2
    where = sorted(d["duplicate_of"] for d in s["duplicates"]["examples"])
    assert where[0].startswith("feedback fb-") and where[1].startswith("senti@v1 train data")
    assert s["ratings"] == {"up": 1, "down": 12} and s["skipped"] == {"rating only (nothing to train on)": 1}
    assert s["requests"] == 17 and s["feedback"] == len(served["feedback"])
    sft = load_examples_strict(DataConfig(train=str(out)), str(out))
    assert len(sft) == 14 and all(ex.messages[-1]["role"] == "assistant" for ex in sft)
    pref_path = out.with_name("senti.preference.jsonl")
    pref = load_examples_strict(DataConfig(train=str(pref_path)), str(pref_path))
    assert len(pref) == 1 and pref[0].rejected == "positive" and pref[0].reference == "negative (write to <EMAIL>)"
    assert [w["response_id"] for w in s["lines"]["preference"]] == [served["stream_id"]]
    for raw in RAW_PII:
        assert raw not in out.read_text() + pref_path.read_text()
    text = harvested["text"]
    assert "harvested 14 SFT example(s)" in text and "dropped 2 duplicate(s)" in text
    assert "1 rating only" in text and "tunesmith continue senti@champion" in text


def test_harvest_never_overwrites_and_names_bad_input(harvested, served, version, capsys):
    before = harvested["out"].read_bytes()
    base = ["--log-dir", str(served["log_dir"]), "--root", str(version["runs"])]
    for argv, words in ((["harvest", "senti", *base, "--out", str(harvested["out"])], "never overwrites"),
                        (["harvest", "nosuch", *base], "unknown model 'nosuch'"),
                        (["harvest", "senti", *base, "--since", "last tuesday"], "invalid date"),
                        (["harvest", "senti", "--log-dir", str(version["root"]), "--root", str(version["runs"])],
                         "no request log")):
        code, _ = cli(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert harvested["out"].read_bytes() == before


def test_harvest_since_filters_requests(served, version, tmp_path):
    from tunesmith.lifecycle.feedback import harvest
    r = harvest("senti", served["log_dir"], out=tmp_path / "late.jsonl", since="2999-01-01", root=version["runs"])
    assert r["harvested"] == {"sft": 0, "preference": 0} and r["files"] == {}
    assert r["skipped"]["request before --since"] == r["feedback"]


def test_continue_on_the_harvested_file_records_it_in_the_manifest(harvested, version):
    from tunesmith.fsutil import sha256_file
    from tunesmith.lifecycle.continuation import continue_version
    from tunesmith.lifecycle.versions import read_lineage
    from tunesmith.rundir import Run
    with redirect_stdout(io.StringIO()):
        v2 = continue_version("senti@v1", str(harvested["out"]), ["train.max_steps=2"], root=version["runs"])
    run = Run(v2.run_dir)
    assert v2.ref == "senti@v2" and v2.parent == "senti@v1" and run.model_dir.is_dir()
    manifest = read_json(run.data_dir / "manifest.json")
    harvest = manifest["harvest"]                  # where the new data came from, line by line
    assert harvest["count"] == 14 and len(harvest["lines"]) == 14 and harvest["sha256"] == sha256_file(harvested["out"])
    assert all(line["response_id"].startswith("chatcmpl-") and line["feedback_id"] for line in harvest["lines"])
    assert read_lineage(v2.run_dir)["data"]["harvest"]["count"] == 14
    assert manifest["files"]["train"]["sha256"] == sha256_file(harvested["out"])
    counts, replayed = manifest["counts"], manifest["replay"]["count"]
    assert counts["train"] - replayed + counts["validation"] + counts["test"] == 14
    assert manifest["inferred_labels"] == ["negative", "positive"]
    sources = {r["source"] for split in ("train", "validation", "test") for r in read_jsonl(run.data_dir / f"{split}.jsonl")}
    assert str(harvested["out"]) in sources


# ---- drift ----------------------------------------------------------------------------------------------------

def _write_traffic(log_dir: Path, run_dir: Path, rows: list[tuple[str, str]]) -> None:
    from tunesmith.serve.requestlog import RequestLog
    log = RequestLog(log_dir)
    info = SimpleNamespace(run_dir=run_dir, kind="adapter")
    for i, (prompt, answer) in enumerate(rows):
        log.log_chat({"id": f"chatcmpl-{i}", "model": "senti@champion", "created": 0,
                      "choices": [{"message": {"content": answer}, "finish_reason": "stop"}]},
                     [{"role": "user", "content": prompt}], info)


def test_drift_tells_shifted_from_same_distribution_traffic(version, tmp_path):
    run_dir = version["v1"].run_dir
    same = [(user_prompt(r["text"]), LABELS[r["label"]]) for r in sentiment_rows(40, seed=11)]
    rng = random.Random(3)
    topics = ["invoice", "refund", "password", "shipping", "warranty", "printer", "router", "login"]
    shifted = [(f"My {rng.choice(topics)} {rng.choice(topics)} stopped working yesterday after the update, "
                f"ticket {i}; what should I do next to fix the {rng.choice(topics)}?", "positive")
               for i in range(40)]
    _write_traffic(tmp_path / "same", run_dir, same)
    _write_traffic(tmp_path / "shifted", run_dir, shifted)
    root = ["--root", str(version["runs"])]
    code, text = cli(["drift", "senti", "--log-dir", str(tmp_path / "same"), *root])
    assert code == 0 and "no drift detected" in text, text
    code, text = cli(["drift", "senti@champion", "--log-dir", str(tmp_path / "shifted"), *root])
    assert code == 0 and "live traffic has moved away from the training data" in text, text
    code, text = cli(["drift", "senti", "--log-dir", str(tmp_path / "shifted"), "--json", *root])
    r = json.loads(text)
    assert r["drift"] and r["version"] == "senti@v1" and {"embedding", "length", "labels"} <= set(r["flagged"])
    emb = r["checks"]["embedding"]
    assert emb["embedder"] == "tfidf" and emb["similarity_drop"] > 0.15
    assert r["checks"]["labels"]["live"]["positive"] == 1.0
    code, text = cli(["drift", "senti", "--log-dir", str(tmp_path / "same"), "--json", *root])
    r = json.loads(text)
    assert not r["drift"] and abs(r["checks"]["embedding"]["similarity_drop"]) < 0.1


def test_drift_bad_input_is_one_line(version, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "requests.jsonl").write_text("")
    root = ["--root", str(version["runs"])]
    for argv, words in ((["drift", "nosuch", "--log-dir", str(tmp_path / "empty"), *root], "unknown model"),
                        (["drift", "senti", "--log-dir", str(tmp_path / "empty"), *root], "no logged chat completions"),
                        (["drift", "senti", "--log-dir", str(tmp_path / "missing"), *root], "not found")):
        code, _ = cli(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and words in err, err
