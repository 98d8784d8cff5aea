"""`tunesmith runs list|compare` on tiny runs: status, headline metric, config differences, HTML with loss curves."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiny import tiny_recipe, tree_digest, write_sentiment
from tunesmith import pipeline
from tunesmith.errors import TunesmithError
from tunesmith.cli.runs import runs_app
from tunesmith.runs import compare_runs, list_runs

FAST = {"max_steps": 6, "eval_every": 3, "save_every": 3}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Two finished runs and a prepared one, built once for this module: the tests only read them."""
    root = tmp_path_factory.mktemp("runs-list")
    data = write_sentiment(root / "sentiment.jsonl")

    def recipe(**sections):
        return tiny_recipe(root, tiny_model_dir, data, **sections)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNESMITH_HOME", str(root / "tunesmith-home"))
        a = pipeline.run(recipe(train=FAST, export={"merged": False}))
        b = pipeline.run(recipe(train={**FAST, "lr": 3e-3}, eval={"compare_base": False},
                                export={"merged": False}))
        c = pipeline.prepare(recipe(train=FAST)).path       # prepared, never trained
    before = tree_digest(root / "runs")
    yield root / "runs", a, b, c
    assert tree_digest(root / "runs") == before, "a test changed the shared runs"


def test_list_runs(runs):
    root, a, b, c = runs
    rows = list_runs(root)
    assert [r["name"] for r in rows] == [a.name, b.name, c.name]
    ra, rb, rc = rows
    assert (ra["status"], rb["status"], rc["status"]) == ("complete", "complete", "prepared")
    assert ra["stages"] == ["prepare", "train", "eval", "export", "run"] and rc["stages"] == ["prepare"]
    assert (ra["task"], ra["method"]) == ("classification", "lora") and Path(ra["model"]).is_dir()
    summary = json.loads((a / "eval" / "summary.json").read_text())
    assert ra["headline"] == {"metric": "accuracy", "base": summary["base"]["metrics"]["accuracy"],
                              "tuned": summary["tuned"]["metrics"]["accuracy"]}
    assert rb["headline"]["base"] is None and rb["headline"]["tuned"] is not None
    assert rc["headline"] is None and rc["train_wall_s"] is None
    assert ra["train_wall_s"] == json.loads((a / "train.json").read_text())["wall_s"]
    assert ra["created"] <= rb["created"]

    cli = CliRunner()
    out = cli.invoke(runs_app, ["list", "--root", str(root)])
    assert out.exit_code == 0, out.output
    assert a.name in out.output and "complete" in out.output and "prepared" in out.output and "→" in out.output
    out = cli.invoke(runs_app, ["list", "--root", str(root), "--json"])
    assert [r["name"] for r in json.loads(out.output)] == [a.name, b.name, c.name]
    out = cli.invoke(runs_app, ["list", "--root", str(root / "nope")])
    assert isinstance(out.exception, TunesmithError) and "runs folder not found" in str(out.exception)


def test_compare_runs(runs, tmp_path):
    root, a, b, c = runs
    html_path = tmp_path / "cmp.html"
    result = compare_runs([a, b], html_out=html_path)
    assert [r["name"] for r in result["runs"]] == [a.name, b.name]
    # only what differs: the learning rate and whether the base model was evaluated
    assert result["config"] == {"eval.compare_base": [True, False], "train.lr": [0.01, 0.003]}
    ta, tb = (json.loads((p / "train.json").read_text()) for p in (a, b))
    assert result["metrics"]["validation.best_val_loss"] == [ta["best_val_loss"], tb["best_val_loss"]]
    sa = json.loads((a / "eval" / "summary.json").read_text())
    assert result["metrics"]["tuned.accuracy"][0] == sa["tuned"]["metrics"]["accuracy"]
    assert result["metrics"]["base.accuracy"] == [sa["base"]["metrics"]["accuracy"], None]
    assert result["training"]["steps"] == [6, 6]
    assert result["training"]["tokens_per_s"] == [ta["tokens_per_s"], tb["tokens_per_s"]]
    page = html_path.read_text()
    assert result["html"] == str(html_path)
    assert page.count("data:image/png;base64,") == 1 and "train.lr" in page and "tuned.accuracy" in page
    assert "<script" not in page and 'src="http' not in page

    cli = CliRunner()
    out = cli.invoke(runs_app, ["compare", str(a), str(b), str(c)])
    assert out.exit_code == 0, out.output
    assert "train.lr" in out.output and "best_val_loss" in out.output and "HTML" not in out.output

    for bad, message in (([str(a), str(root / "ghost-001")], "run directory not found"),
                         ([str(a), str(tmp_path)], "not a tunesmith run directory"),
                         ([str(a)], "compare needs at least two run directories")):
        out = cli.invoke(runs_app, ["compare", *bad])
        assert isinstance(out.exception, TunesmithError), out.output
        assert message in str(out.exception) and "\n" not in str(out.exception)


def test_identical_recipes_and_sweep_trials_are_listed(recipe_file, tmp_path):
    from tunesmith.sweep import sweep
    recipe = recipe_file(train=FAST, sweep={"space": {"train.lr": {"type": "categorical", "choices": [0.01]}},
                                            "trials": 1})
    sweep(recipe)
    rows = list_runs(tmp_path / "runs")
    assert [(r["name"], r["sweep"], r["status"]) for r in rows] == [("tiny-t000-001", "tiny-sweep", "complete")]
    assert rows[0]["headline"]["metric"] == "best_val_loss"
    other = pipeline.run(recipe, ["eval.compare_base=false", "eval.baselines=[]",
                                                  "forgetting.general_text=null", "forgetting.general_prompts=null",
                                                  "export.merged=false", "export.verify=false",
                                                  "name=tiny-t000"], evaluate_tuned=False)
    trial = Path(rows[0]["path"])
    result = compare_runs([trial, other])
    assert result["config"] == {"output_dir": [str(trial.parent), str(tmp_path / "runs")],
                                "tracking.experiment": ["tiny", None]}   # trials log to the recipe's experiment
    # same name in two folders: the runs are told apart by their paths
    assert [r["name"] for r in result["runs"]] == [str(trial), str(other)]
