"""`tunesmith continue`: replay vs no replay on a disjoint task, stack, backward-transfer evaluation, bad input."""
from __future__ import annotations

import io
import json
import random
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from tiny import make_model, make_tokenizer, sentiment_rows, tiny_recipe
from tunesmith.fsutil import sha256_file
from tunesmith.rundir import Layout, read_json, read_jsonl

B_WORDS = {0: ["capital", "France", "Paris", "What"], 1: ["brown", "jumps", "over", "helpful"]}
B_FILLER = ["sentence", "text", "following", "one", "in", "is", "of", "Summarise"]
B_ARGS = ['data.labels={"0": neutral, "1": review}', "data.instruction=Is this neutral or a review?"]
QUIET = ["eval.baselines=[]", "forgetting.general_text=null", "forgetting.general_prompts=null",
         "export.check_parity=false", "export.merged=false", "eval.compare_base=false"]


def task_b_rows(n: int, seed: int = 1) -> list[dict]:
    """Task B: other words of the tiny vocabulary decide two other labels (disjoint from task A)."""
    rng = random.Random(seed)
    return [{"text": f"{' '.join(rng.sample(B_FILLER, 3))} {rng.choice(B_WORDS[i % 2])} "
                     f"{rng.choice(B_WORDS[i % 2])} {i}", "label": i % 2} for i in range(n)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def lineage(tmp_path_factory, tiny_model_dir):
    """v1 learns task A; v2 continues on B without replay, v3 (also from v1) with replay, v4 stacks on v1."""
    from tunesmith import pipeline
    from tunesmith.lifecycle import register
    from tunesmith.lifecycle.continuation import continue_version
    root = tmp_path_factory.mktemp("continue")
    runs = root / "runs"
    b_file = _write(root / "task_b.jsonl", task_b_rows(80))
    recipe = tiny_recipe(root, tiny_model_dir, _write(root / "task_a.jsonl", sentiment_rows(80)),
                         eval={"baselines": []}, forgetting={"general_text": None, "general_prompts": None},
                         export={"check_parity": False})
    out = {"root": root, "runs": runs, "b": b_file}
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(io.StringIO()):
        mp.setenv("TUNESMITH_HOME", str(root / "home"))
        v1 = pipeline.run(recipe)
        out["v1"] = register(v1, "tiny")
        out["v2"] = continue_version("tiny@v1", str(b_file), [*B_ARGS, *QUIET, "continue.replay_ratio=0"], root=runs)
        out["v3"] = continue_version("tiny@v1", str(b_file), [*B_ARGS, *QUIET, "continue.replay_ratio=0.3"],
                                     root=runs)
        out["v4"] = continue_version("tiny@v1", str(b_file), [*B_ARGS, *QUIET, "continue.strategy=stack"], root=runs)
    return out


def _backward(version) -> dict:
    return read_json(Layout(version.run_dir).eval_dir / "backward.json")


def test_replay_forgets_less_than_no_replay(lineage):
    plain, replay = _backward(lineage["v2"])["suites"], _backward(lineage["v3"])["suites"]
    old_plain, old_replay = plain["tiny@v1"], replay["tiny@v1"]
    assert old_plain["metric"] == "accuracy" and old_plain["n"] == old_replay["n"] > 0
    # v1 answers task A with A's labels (the tiny random model learns the answer format, and little more,
    # in a few seconds: it scores what answering one of A's labels scores)
    assert old_plain["ancestor_score"] == old_replay["ancestor_score"] > 0.3
    # without replay task A is forgotten; replay keeps most of it (direction and a margin)
    assert old_plain["delta"] < -0.3
    assert old_replay["delta"] > old_plain["delta"] + 0.3
    assert old_plain["flips"]["right_to_wrong"] > old_replay["flips"]["right_to_wrong"]
    # both learnt the new task B (v1 could not answer it)
    for suites, name in ((plain, "tiny@v2"), (replay, "tiny@v3")):
        assert suites[name]["ancestor"] == "tiny@v1" and suites[name]["ancestor_score"] == 0.0
        assert suites[name]["delta"] > 0.3


def test_replay_sample_is_recorded(lineage):
    v1, v3 = lineage["v1"], lineage["v3"]
    layout = Layout(v3.run_dir)
    manifest = read_json(layout.data_dir / "manifest.json")
    rep = manifest["replay"]
    v1_train = Layout(v1.run_dir).data_dir / "train.jsonl"
    assert rep["sources"][0]["version"] == "tiny@v1" and rep["sources"][0]["sha256"] == sha256_file(v1_train)
    assert rep["count"] == rep["sources"][0]["count"] == rep["requested"] > 0
    assert abs(rep["share"] - 0.3) < 0.03                     # share of the final training mix
    assert sum(rep["strata"].values()) == rep["count"] and set(rep["strata"]) == {"negative", "positive"}
    assert max(rep["strata"].values()) - min(rep["strata"].values()) <= 1   # stratified (A is balanced)
    train = read_jsonl(layout.data_dir / "train.jsonl")
    replayed = [r for r in train if r["source"].startswith("replay tiny@v1")]
    assert len(replayed) == rep["count"] == manifest["counts"]["train"] - rep["new_examples"]
    keys = [json.dumps(r["messages"]) for r in replayed]
    assert len(set(keys)) == len(keys)                        # deduplicated
    v1_keys = {json.dumps(r["messages"]) for r in read_jsonl(v1_train)}
    assert set(keys) <= v1_keys                               # taken from v1's training split
    cont = layout.stages()["continue"]
    assert cont["parent"] == "tiny@v1" and cont["strategy"] == "replay" and cont["replay"]["count"] == rep["count"]
    assert "restarted" in cont["lr_schedule"]
    assert read_json(layout.train_json)["continuation"]["parent"] == "tiny@v1"
    recipe = layout.recipe_path.read_text()
    assert str(Layout(v1.run_dir).model_dir) in recipe and "continue:" in recipe
    lineage_json = read_json(layout.lineage_json)
    assert lineage_json["parent"] == "tiny@v1" and lineage_json["strategy"] == "replay"
    assert lineage_json["data"]["replay"]["count"] == rep["count"]
    # the learning-rate schedule restarted: warmup from a small lr again
    lrs = [r["lr"] for r in layout.metrics() if r.get("type") == "train" and "lr" in r]
    assert lrs and lrs[0] < max(lrs)
    # no replay: nothing mixed in
    assert read_json(Layout(lineage["v2"].run_dir).data_dir / "manifest.json")["replay"]["count"] == 0


def test_backward_json_and_report(lineage):
    b = _backward(lineage["v3"])
    assert b["version"] == "tiny@v3" and b["parent"] == "tiny@v1" and b["strategy"] == "replay"
    assert set(b["suites"]) == {"tiny@v3", "tiny@v1"}
    for s in b["suites"].values():
        assert set(s) >= {"metric", "ancestor_score", "child_score", "delta", "n", "flips"}
        assert s["delta"] == pytest.approx(s["child_score"] - s["ancestor_score"])
    # the recorded score of v1 is what v1's own evaluation wrote
    v1_summary = read_json(Layout(lineage["v1"].run_dir).summary_json)
    assert b["suites"]["tiny@v1"]["ancestor_score"] == v1_summary["tuned"]["metrics"]["accuracy"]
    rows = {r["version"]: r["scores"] for r in b["table"]["versions"]}
    assert rows["tiny@v3"]["tiny@v1"] == b["suites"]["tiny@v1"]["child_score"]
    report = (lineage["v3"].run_dir / "report.md").read_text()
    assert "## Lineage: backward transfer" in report and "lineage.png" in report
    assert (lineage["v3"].run_dir / "lineage.png").stat().st_size > 1000
    earlier = read_json(lineage["v3"].run_dir / "eval" / "report_data.json")["lineage"]["earlier"]
    assert [b["version"] for b in earlier] == ["tiny@v2"]     # the sibling without replay is plotted beside it
    assert "Lineage: backward transfer" in (lineage["v3"].run_dir / "report.html").read_text()
    # a run that is not a continuation has no lineage section
    assert "Lineage" not in (lineage["v1"].run_dir / "report.md").read_text()


def test_stack_trains_a_new_adapter_on_the_parent_merged_model(lineage):
    v1, v4 = lineage["v1"], lineage["v4"]
    layout = Layout(v4.run_dir)
    from tunesmith.rundir import Run
    r = Run(v4.run_dir).recipe
    assert Path(r.model.name) == Layout(v1.run_dir).merged_dir.resolve()
    assert r.method.init_from is None and r.continue_.strategy == "stack"
    assert layout.stages()["continue"]["strategy"] == "stack"
    assert read_json(layout.data_dir / "manifest.json")["replay"]["count"] == 0   # stack: no replay by default
    assert read_json(layout.lineage_json)["strategy"] == "stack" and v4.parent == "tiny@v1"
    b = _backward(v4)
    assert set(b["suites"]) == {"tiny@v4", "tiny@v1"} and b["suites"]["tiny@v4"]["delta"] > 0.3


def _cli(argv: list[str], runs: Path, home: Path, mp) -> tuple[int, str]:
    from tunesmith.cli import main
    mp.setenv("TUNESMITH_HOME", str(home))
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.mark.parametrize("ref", ["tiny@v9", "tiny@champion", "nosuch@v1"])
def test_unknown_version_or_alias_is_one_line_and_creates_nothing(lineage, ref, monkeypatch, capsys):
    runs = lineage["runs"]
    before = sorted(p.name for p in runs.iterdir())
    code, _ = _cli(["continue", ref, str(lineage["b"]), *B_ARGS, "--root", str(runs)], runs, lineage["root"] / "home",
                   monkeypatch)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown model version" in err
    assert sorted(p.name for p in runs.iterdir()) == before


@pytest.mark.parametrize("strategy", ["replay", "stack"])
def test_base_model_mismatch_is_one_line(lineage, strategy, tmp_path, monkeypatch, capsys):
    other = tmp_path / "other-model"
    tok = make_tokenizer()
    make_model(tok, seed=3).save_pretrained(other)
    tok.save_pretrained(other)
    runs = lineage["runs"]
    before = sorted(p.name for p in runs.iterdir())
    code, _ = _cli(["continue", "tiny@v1", str(lineage["b"]), *B_ARGS, f"continue.strategy={strategy}",
                    f"model.name={other}", "--root", str(runs)], runs, lineage["root"] / "home", monkeypatch)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "does not match" in err and "model.name" in err
    assert sorted(p.name for p in runs.iterdir()) == before


def test_replay_keeps_the_parent_adapter_shape(lineage):
    from tunesmith.errors import TunesmithError
    from tunesmith.lifecycle.continuation import child_recipe
    with pytest.raises(TunesmithError, match="method.r is fixed by the parent's adapter"):
        child_recipe(lineage["v1"], str(lineage["b"]), [*B_ARGS, "method.r=8"], 9)


def test_replay_needs_a_lora_family_parent(lineage, tmp_path):
    import dataclasses
    import shutil

    import yaml
    from tunesmith.errors import TunesmithError
    from tunesmith.lifecycle.continuation import child_recipe
    copy = tmp_path / "full-001"
    shutil.copytree(lineage["v1"].run_dir, copy)
    raw = yaml.safe_load((copy / "recipe.yaml").read_text())
    raw["method"] = {"name": "full"}
    (copy / "recipe.yaml").write_text(yaml.safe_dump(raw))
    parent = dataclasses.replace(lineage["v1"], run_dir=copy)
    with pytest.raises(TunesmithError, match="supports LoRA-family parents") as e:
        child_recipe(parent, str(lineage["b"]), B_ARGS, 9)
    assert len(str(e.value).splitlines()) == 1
