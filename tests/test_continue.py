"""`tunesmith continue`: replay vs no replay on a disjoint task, stack, regularize (L2-SP), `model.from` in a
recipe, backward-transfer evaluation, bad input."""
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
    """v1 learns task A; v2 continues on B without replay, v3 (also from v1) with replay, v4 stacks on v1, v5
    regularizes toward v1 (default weight), v6 is `tunesmith run` of a recipe with `model.from: tiny@v1`."""
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
        out["v5"] = continue_version("tiny@v1", str(b_file), [*B_ARGS, *QUIET, "continue.strategy=regularize"],
                                     root=runs)
        from tunesmith.cli import main
        from tunesmith.lifecycle.versions import resolve
        before = set(runs.iterdir())
        out["from_code"] = main(["run", str(from_recipe(root, runs, "tiny@v1"))])
        out["from_dirs"] = set(runs.iterdir()) - before
        out["v6"] = resolve("tiny@v6", root=runs)
    return out


def from_recipe(root: Path, runs: Path, ref: str, **model) -> Path:
    """A user recipe (its data path relative to it) training task B as the next version of ``ref``."""
    import yaml
    recipe = {"name": "from-recipe", "task": "classification", "objective": {"name": "sft"}, "output_dir": str(runs),
              "model": {"from": ref, **model},
              "data": {"train": "task_b.jsonl", "format": "labelled", "labels": {"0": "neutral", "1": "review"},
                       "instruction": "Is this neutral or a review?", "max_length": 64, "clean": {"near_dedup": False}},
              "train": {"epochs": 3, "batch_size": 4, "lr": 1e-2, "eval_every": 5, "save_every": 5},
              "eval": {"max_new_tokens": 4, "batch_size": 8, "embedding_model": "tfidf", "baselines": [],
                       "compare_base": False},
              "forgetting": {"general_text": None, "general_prompts": None},
              "export": {"check_parity": False, "merged": False},
              "tracking": {"mlflow": False}, "continue": {"replay_ratio": 0}}
    path = root / f"from-{ref.replace('@', '-')}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _adapter(version) -> dict:
    from safetensors.torch import load_file
    return load_file(str(Layout(version.run_dir).model_dir / "adapter_model.safetensors"))


def _distance(a: dict, b: dict) -> float:
    assert set(a) == set(b) and a
    return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a) ** 0.5


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


def _other_model(tmp_path):
    """A second tiny model (other weights) that is not the lineage's base."""
    other = tmp_path / "other-model"
    tok = make_tokenizer()
    make_model(tok, seed=3).save_pretrained(other)
    tok.save_pretrained(other)
    return other


@pytest.mark.parametrize("strategy", ["replay", "stack"])
def test_base_model_mismatch_is_one_line(lineage, strategy, tmp_path, monkeypatch, capsys):
    other = _other_model(tmp_path)
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


@pytest.mark.parametrize("strategy", ["replay", "regularize"])
def test_adapter_strategies_need_a_lora_family_parent(lineage, strategy, tmp_path):
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
    with pytest.raises(TunesmithError, match=f"strategy {strategy} continues the parent's adapter and supports "
                                             "LoRA-family parents") as e:
        child_recipe(parent, str(lineage["b"]), [*B_ARGS, f"continue.strategy={strategy}"], 9)
    assert len(str(e.value).splitlines()) == 1 and e.value.field == "continue.strategy"


# ------------------------------------------------------------------------------------ regularize (L2-SP)

def test_regularize_stays_closer_to_the_parent_and_forgets_no_more(lineage):
    parent, plain, reg = _adapter(lineage["v1"]), _adapter(lineage["v2"]), _adapter(lineage["v5"])
    d_plain, d_reg = _distance(plain, parent), _distance(reg, parent)
    assert d_reg < 0.7 * d_plain                              # the penalty held the weights near v1's
    old_plain, old_reg = _backward(lineage["v2"])["suites"]["tiny@v1"], _backward(lineage["v5"])["suites"]["tiny@v1"]
    assert old_reg["ancestor_score"] == old_plain["ancestor_score"]
    assert old_reg["delta"] >= old_plain["delta"]             # task A dropped no more than without replay
    # what train.json recorded is this run: the anchor is v1's adapter, its end the saved adapter
    info = read_json(Layout(lineage["v5"].run_dir).train_json)
    anchor = info["anchor"]
    assert anchor["kind"] == "l2sp" and anchor["weight"] == 0.5 and anchor["parameters"] == len(parent)
    assert anchor["elements"] == sum(t.numel() for t in parent.values()) == info["trainable_parameters"]
    assert anchor["penalty_start"] == 0.0 and anchor["penalty_end"] > 0
    assert anchor["l2_distance_end"] == pytest.approx(d_reg, rel=1e-3)
    assert anchor["penalty_end"] == pytest.approx(0.5 * d_reg ** 2, rel=2e-3)


def test_regularize_is_recorded(lineage):
    v1, v5 = lineage["v1"], lineage["v5"]
    layout = Layout(v5.run_dir)
    from tunesmith.rundir import Run
    r = Run(v5.run_dir).recipe
    assert r.continue_.strategy == "regularize" and r.continue_.ratio() == 0.0        # no replay by default
    assert Path(r.method.init_from) == Layout(v1.run_dir).model_dir.resolve() and r.model.from_ == "tiny@v1"
    assert read_json(layout.data_dir / "manifest.json")["replay"]["count"] == 0
    cont = read_json(layout.train_json)["continuation"]
    assert cont["strategy"] == "regularize" and cont["parent"] == "tiny@v1"
    assert cont["regularize"]["weight"] == 0.5 and cont["regularize"]["penalty_end"] > 0
    assert layout.stages()["continue"]["regularize"] == {"kind": "l2sp", "weight": 0.5}
    lin = read_json(layout.lineage_json)
    assert lin["strategy"] == "regularize" and lin["parent"] == "tiny@v1" and v5.parent == "tiny@v1"
    assert lin["continuation"]["regularize"] == cont["regularize"]
    rows = [r for r in layout.metrics() if r.get("type") == "train"]
    assert rows[0]["penalty"] == 0.0 and max(r["penalty"] for r in rows) > 0          # logged every step
    lrs = [r["lr"] for r in rows]
    assert lrs[0] < max(lrs)                                                          # the schedule restarted
    # an unregularised continuation records no anchor and logs no penalty
    plain = Layout(lineage["v2"].run_dir)
    assert read_json(plain.train_json)["anchor"] is None and "regularize" not in read_json(plain.train_json)["continuation"]
    assert all("penalty" not in r for r in plain.metrics() if r.get("type") == "train")


def test_weight_anchor_penalty_and_a_bare_loop_call(tmp_path):
    import torch

    from tunesmith.train.anchor import WeightAnchor, anchor_for_run
    assert anchor_for_run(tmp_path, torch.nn.Linear(2, 2)) is None                     # a bare loop call
    lin = torch.nn.Linear(3, 2)
    lin.bias.requires_grad_(False)
    a = WeightAnchor(lin, 2.0)
    assert a.names == ["weight"] and a.elements == 6 and a.measure(lin) == 0.0
    with torch.no_grad():
        lin.weight += 0.5
    assert a.measure(lin) == pytest.approx(2.0 * 6 * 0.25)
    a.penalty(lin).backward()
    assert torch.allclose(lin.weight.grad, torch.full((2, 3), 2.0 * 2 * 0.5))


# ------------------------------------------------------------------------------------ model.from in a recipe

def test_model_from_in_a_recipe_trains_and_registers_the_next_version(lineage):
    from tunesmith.rundir import Run
    v1, v6 = lineage["v1"], lineage["v6"]
    assert lineage["from_code"] == 0 and lineage["from_dirs"] == {v6.run_dir}
    assert v6.parent == "tiny@v1" and v6.run_dir.name.startswith("from-recipe-")
    r = Run(v6.run_dir).recipe
    v1r = Run(v1.run_dir).recipe
    assert r.data.train == str(lineage["b"].resolve())                               # the recipe's own data
    assert r.data.labels == {"0": "neutral", "1": "review"}
    assert r.model.name == v1r.model.name and r.model.from_ == "tiny@v1"              # the parent's base
    assert r.continue_.strategy == "replay" and r.continue_.ratio() == 0.0
    assert Path(r.method.init_from) == Layout(v1.run_dir).model_dir.resolve()       # continued v1's adapter
    assert (r.method.r, r.method.alpha) == (v1r.method.r, v1r.method.alpha)          # taken from the parent
    layout = Layout(v6.run_dir)
    assert layout.stages()["continue"]["parent"] == "tiny@v1"
    assert read_json(layout.lineage_json)["strategy"] == "replay"
    b = _backward(v6)
    assert set(b["suites"]) == {"tiny@v6", "tiny@v1"} and b["suites"]["tiny@v6"]["delta"] > 0.3


def test_model_from_unknown_version_is_one_line_and_creates_nothing(lineage, monkeypatch, capsys):
    runs = lineage["runs"]
    before = sorted(p.name for p in runs.iterdir())
    code, _ = _cli(["run", str(from_recipe(lineage["root"], runs, "tiny@v9"))], runs, lineage["root"] / "home",
                   monkeypatch)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown model version" in err
    assert sorted(p.name for p in runs.iterdir()) == before


def test_model_from_with_another_base_model_is_one_line(lineage, tmp_path, monkeypatch, capsys):
    other = _other_model(tmp_path)
    runs = lineage["runs"]
    before = sorted(p.name for p in runs.iterdir())
    path = from_recipe(tmp_path, runs, "tiny@v1", name=str(other))
    (tmp_path / "task_b.jsonl").write_text(lineage["b"].read_text())
    code, _ = _cli(["run", str(path)], runs, lineage["root"] / "home", monkeypatch)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "does not match the parent's base model" in err
    assert sorted(p.name for p in runs.iterdir()) == before


def test_pipeline_refuses_model_from_instead_of_training_from_the_base(lineage):
    """From Python, pipeline.run/prepare cannot make a version: a recipe with model.from is refused, not
    silently trained from model.name."""
    from tunesmith import pipeline
    from tunesmith.errors import TunesmithError
    runs = lineage["runs"]
    before = sorted(p.name for p in runs.iterdir())
    with pytest.raises(TunesmithError, match="continues a registered version") as info:
        pipeline.run(str(from_recipe(lineage["root"], runs, "tiny@v1")))
    assert info.value.field == "model.from" and sorted(p.name for p in runs.iterdir()) == before


# ------------------------------------------------------------------------------------ a classification head

def test_a_classification_head_continues_from_its_parent(tmp_path, tiny_model_dir, monkeypatch):
    """A head version (objective.name: classification) continues with replay: the child keeps the
    head objective, starts from the parent's head (its rows for the labels both know, zero for new ones) and the
    parent's suite is measured again; a `model.from` recipe naming no objective also continues as a head."""
    import yaml
    from safetensors.torch import load_file
    from tunesmith import pipeline
    from tunesmith.cli import main
    from tunesmith.lifecycle import register
    from tunesmith.lifecycle.continuation import continue_version
    from tunesmith.lifecycle.versions import resolve
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    runs = tmp_path / "runs"
    recipe = tiny_recipe(tmp_path, tiny_model_dir, _write(tmp_path / "task_a.jsonl", sentiment_rows(80)),
                         eval={"baselines": [], "compare_base": False},
                         forgetting={"general_text": None, "general_prompts": None},
                         export={"check_parity": False, "merged": False}, objective={"name": "classification"})
    b_file = _write(tmp_path / "task_b.jsonl", task_b_rows(80))
    with redirect_stdout(io.StringIO()):
        v1 = register(pipeline.run(recipe), "head")
        v2 = continue_version("head@v1", str(b_file), [*B_ARGS, *QUIET, "continue.replay_ratio=0.3"], root=runs)
    parent, child = Layout(v1.run_dir), Layout(v2.run_dir)
    assert yaml.safe_load(child.recipe_path.read_text())["objective"]["name"] == "classification"
    notes = read_json(child.train_json)["objective_notes"]
    assert notes["head start"] == "the parent version's head (2 of 4 labels; new, from zero: neutral, review)"
    labels = json.loads((child.model_dir / "cls_head.json").read_text())["labels"]
    assert labels == ["negative", "neutral", "positive", "review"]
    before, after = load_file(str(parent.model_dir / "cls_head.safetensors")), \
        load_file(str(child.model_dir / "cls_head.safetensors"))
    # the known labels' rows moved from the parent's (training went on), not from a fresh start
    kept = after["weight"][[0, 2]]
    cos = float((kept * before["weight"]).sum() / (kept.norm() * before["weight"].norm()))
    assert cos > 0.5
    suites = _backward(v2)["suites"]
    recorded = read_json(parent.summary_json)["tuned"]["metrics"]["accuracy"]
    assert suites["head@v1"]["metric"] == "accuracy" and suites["head@v1"]["ancestor_score"] == recorded
    assert 0 <= suites["head@v1"]["child_score"] <= 1 and suites["head@v1"]["n"] > 0
    # the parent (negative/positive only) on the child's suite (neutral/review): every answer a miss
    assert suites["head@v2"]["ancestor_score"] == 0.0 and suites["head@v2"]["child_score"] is not None
    # model.from in a recipe without an objective: the parent's (a head)
    user = from_recipe(tmp_path, runs, "head@v1")
    raw = yaml.safe_load(user.read_text())
    raw.pop("objective")
    raw["continue"] = {"replay_ratio": 0.3}
    user.write_text(yaml.safe_dump(raw))
    with redirect_stdout(io.StringIO()):
        assert main(["run", str(user)]) == 0
    v3 = resolve("head@v3", root=runs)
    assert yaml.safe_load(Layout(v3.run_dir).recipe_path.read_text())["objective"]["name"] == "classification"
