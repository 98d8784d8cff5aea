"""Sweeps: trials as runs with sampled overrides, median pruning, resume after SIGKILL, clear search-space errors."""
from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import typer
from optuna.trial import TrialState
from typer.testing import CliRunner

from tunesmith.config import load_recipe
from tunesmith.errors import TunesmithError
from tunesmith.cli.sweep import sweep_command
from tunesmith.sweep import make_on_eval, sweep

SPACE = {"train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
         "method.r": {"type": "int", "low": 2, "high": 8, "step": 2}}
FAST = {"max_steps": 10, "eval_every": 5, "save_every": 5}


OFF = {"mlflow": False}      # tracking is tested where it is the point


def _study(sweep_dir: Path, name: str = "tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'study.db'}")


def _app():
    app = typer.Typer()
    app.command()(sweep_command)
    return app


def test_sweep_trials_are_runs_with_the_sampled_values(recipe_file, tmp_path, capsys):
    recipe = recipe_file(train=FAST, sweep={"space": SPACE, "pruning": False, "trials": 2}, tracking=OFF)
    result = CliRunner().invoke(_app(), [str(recipe), "--trials", "3", "-o", "train.eval_every=5"])
    assert result.exit_code == 0, result.output
    sweep_dir = tmp_path / "runs" / "tiny-sweep"
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert summary["counts"] == {"COMPLETE": 3}
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2]
    for t in summary["trials"]:
        run = Path(t["run_dir"])
        r = load_recipe(run / "recipe.yaml")                        # a normal run with the trial's values
        assert r.train.lr == pytest.approx(t["params"]["train.lr"]) and r.method.r == t["params"]["method.r"]
        assert not r.eval.compare_base and r.eval.baselines == [] and r.forgetting.general_text is None
        assert not r.export.merged
        assert t["value"] == pytest.approx(json.loads((run / "train.json").read_text())["best_val_loss"])
        assert not (run / "eval").exists()                            # judged on validation loss only
        assert run.parent == sweep_dir / "trials"
    assert len({json.dumps(t["params"], sort_keys=True) for t in summary["trials"]}) == 3
    values = [t["value"] for t in summary["trials"]]
    best = summary["best"]
    assert best["value"] == min(values) and summary["direction"] == "minimize"
    assert best["run_dir"] == summary["trials"][values.index(min(values))]["run_dir"]
    # the printed command reproduces the best configuration
    assert best["command"] in result.output.replace("\n", "")
    args = shlex.split(best["command"])
    assert args[:3] == ["tunesmith", "run", str(recipe)]
    again = load_recipe(args[2], args[3:])
    assert again.train.lr == pytest.approx(best["params"]["train.lr"]) and again.method.r == best["params"]["method.r"]
    assert again.train.eval_every == 5
    for name in ("history", "importance", "intermediate"):
        assert (sweep_dir / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert set(summary["importance"]) == {"train.lr", "method.r"}
    page = (sweep_dir / "sweep.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "src=\"http" not in page
    assert _study(sweep_dir).user_attrs["metric"] == "val_loss"

    # a finished sweep is not rerun; asking for more trials adds exactly the missing ones
    first = {t.number: t.datetime_complete for t in _study(sweep_dir).trials}
    capsys.readouterr()
    assert len(sweep(recipe, ["train.max_steps=12"], trials=3)["trials"]) == 3
    assert "recipe differs from the one this study started with (train.max_steps)" in \
        capsys.readouterr().err.replace("\n", "")
    summary = sweep(recipe, trials=4)
    assert summary["counts"] == {"COMPLETE": 4}
    assert {t.number: t.datetime_complete for t in _study(sweep_dir).trials if t.number < 3} == first
    assert sorted(p.name for p in (sweep_dir / "trials").iterdir()) == [f"tiny-t00{i}-001" for i in range(4)]


def test_on_eval_callback_prunes_by_the_median_rule():
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for losses in ([3.0, 2.0], [3.2, 2.2]):
        trial = study.ask()
        cb = make_on_eval(trial)
        for step, loss in zip((5, 10), losses):
            cb(step, {"val_loss": loss, "perplexity": math.exp(loss)})
        study.tell(trial, losses[-1])
    good = study.ask()
    make_on_eval(good)(5, {"val_loss": 2.9})                  # better than the median: continues
    bad = study.ask()
    with pytest.raises(optuna.TrialPruned):
        make_on_eval(bad)(5, {"val_loss": 9.0})
    # a maximised study (task metric) compares negated losses: a high loss is still the bad one
    up = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for loss in (3.0, 3.2):
        t = up.ask()
        make_on_eval(t, sign=-1.0)(5, {"val_loss": loss})
        up.tell(t, 0.8)
    with pytest.raises(optuna.TrialPruned):
        make_on_eval(up.ask(), sign=-1.0)(5, {"val_loss": 9.0})
    make_on_eval(up.ask(), sign=-1.0)(5, {"val_loss": 2.0})


def test_an_obviously_bad_trial_is_pruned_for_real(recipe_file, tmp_path):
    recipe = recipe_file(train={"max_steps": 15, "eval_every": 5, "save_every": 5},
                         sweep={"space": {"train.lr": {"type": "float", "low": 1.0e-7, "high": 3.0e-2, "log": True}}},
                         tracking={"mlflow": True})
    sweep_dir = tmp_path / "runs" / "tiny-sweep"
    sweep_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{sweep_dir / 'study.db'}")
    for lr in (1e-2, 2e-2, 1e-7):               # two that learn, then one that cannot move in 15 steps
        study.enqueue_trial({"train.lr": lr})
    summary = sweep(recipe, trials=3)
    states = [t["state"] for t in summary["trials"]]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = summary["trials"][2]
    assert pruned["last_step"] == 5 and pruned["value"] is None
    assert pruned["last_val_loss"] > max(t["value"] for t in summary["trials"][:2])
    run = Path(pruned["run_dir"])
    assert run.is_dir() and not (run / "train.json").exists()     # stopped inside training
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 5
    assert json.loads((run / "run.json").read_text())["stages"]["pruned"]["step"] == 5
    from tunesmith.runs import list_runs
    assert [r["status"] for r in list_runs(tmp_path / "runs")] == ["complete", "complete", "pruned"]
    # every trial, the pruned one too, is in MLflow under the recipe's experiment (store beside the runs)
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    mruns = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.info.run_name for r in mruns) == ["tiny-t000-001", "tiny-t001-001", "tiny-t002-001"]
    pruned_run = next(r for r in mruns if r.info.run_name == "tiny-t002-001")
    assert pruned_run.data.tags["sweep"] == "tiny-sweep" and pruned_run.data.tags["stages"].endswith("pruned")
    assert [m.step for m in client.get_metric_history(pruned_run.info.run_id, "val_loss")] == [5]


CHILD = r"""
import os, signal, sys
from tunesmith import pipeline
from tunesmith.sweep import sweep
real_run = pipeline.run

def run(recipe, overrides=None, **kw):      # the process dies (SIGKILL) in the middle of trial 1
    inner = kw["on_eval"]
    def on_eval(step, metrics):
        inner(step, metrics)
        if recipe is not None and getattr(recipe, "recipe", recipe).name.endswith("-t001") and step >= 10:
            os.kill(os.getpid(), signal.SIGKILL)
    kw["on_eval"] = on_eval
    return real_run(recipe, overrides, **kw)

pipeline.run = run
sweep(sys.argv[1], trials=3)
"""


def test_a_killed_sweep_continues_without_rerunning_finished_trials(recipe_file, tmp_path):
    recipe = recipe_file(train={"max_steps": 20, "eval_every": 5, "save_every": 5},
                         sweep={"space": SPACE, "pruning": False}, tracking=OFF)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(recipe)], check=False, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    sweep_dir = tmp_path / "runs" / "tiny-sweep"
    before = _study(sweep_dir).trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    killed_dir = Path(before[1].user_attrs["run_dir"])
    assert (killed_dir / "checkpoints" / "step-000005").is_dir() and not (killed_dir / "train.json").exists()

    summary = sweep(recipe, trials=3)
    after = _study(sweep_dir).trials
    assert [t.state for t in after] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                        TrialState.COMPLETE]
    assert sum(t["state"] in ("COMPLETE", "PRUNED") for t in summary["trials"]) == 3
    assert after[0].datetime_complete == before[0].datetime_complete          # not rerun
    assert after[0].user_attrs["run_dir"] == before[0].user_attrs["run_dir"]
    retry = after[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == before[1].params
    assert Path(retry.user_attrs["run_dir"]) == killed_dir                     # continued from its checkpoint
    assert retry.intermediate_values.keys() == {5, 10, 15, 20}
    train = json.loads((killed_dir / "train.json").read_text())
    assert train["steps"] == 20 and retry.value == pytest.approx(train["best_val_loss"])
    steps = [r["step"] for r in map(json.loads, (killed_dir / "metrics.jsonl").read_text().splitlines())
             if r["type"] == "train"]
    assert steps == list(range(1, 21))
    assert sorted(p.name for p in (sweep_dir / "trials").iterdir()) == ["tiny-t000-001", "tiny-t001-001",
                                                                       "tiny-t003-001"]


def test_ctrl_c_in_a_trial_queues_it_again(recipe_file, tmp_path, monkeypatch):
    from tunesmith import pipeline
    recipe = recipe_file(train=FAST, sweep={"space": SPACE, "pruning": False}, tracking=OFF)
    real_run = pipeline.run

    def interrupted(r, overrides=None, **kw):
        if r is not None and getattr(r, "recipe", r).name.endswith("-t001"):      # a prepared Run
            raise KeyboardInterrupt
        return real_run(r, overrides, **kw)
    monkeypatch.setattr(pipeline, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep(recipe, trials=2)
    monkeypatch.setattr(pipeline, "run", real_run)
    summary = sweep(recipe, trials=2)
    assert [(t["number"], t["state"], t["retry_of"]) for t in summary["trials"]] == \
        [(0, "COMPLETE", None), (1, "FAIL", None), (2, "COMPLETE", 1)]
    assert summary["trials"][2]["params"] == summary["trials"][1]["params"]


def test_sweep_on_a_task_metric_evaluates_each_trial(recipe_file, tmp_path):
    recipe = recipe_file(train=FAST, sweep={"space": {"method.dropout": {"type": "categorical",
                                                                         "choices": [0.0, 0.1]}},
                                            "metric": "accuracy", "evaluate": True, "trials": 1},
                         tracking=OFF)
    summary = sweep(recipe)
    assert summary["direction"] == "maximize" and summary["counts"] == {"COMPLETE": 1}
    trial = summary["trials"][0]
    tuned = json.loads((Path(trial["run_dir"]) / "eval" / "summary.json").read_text())["tuned"]["metrics"]
    assert trial["value"] == tuned["accuracy"]
    assert summary["importance"] is None and "importance" in " ".join(summary["notes"])
    assert not (sweep_dir := tmp_path / "runs" / "tiny-sweep" / "importance.png").exists(), sweep_dir


@pytest.mark.parametrize("space, overrides, expected", [
    ({}, [], "field 'sweep.space': is empty; expected dotted recipe keys"),
    ({"train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}, [],
     "field 'sweep.space.train.learning_rate': unknown key 'learning_rate' in train; expected one of:"),
    ({"train": {"type": "float", "low": 1e-5, "high": 1e-3}}, [], "'train' is a section"),
    ({"name": {"type": "categorical", "choices": ["a", "b"]}}, [], "'name' cannot be swept"),
    ({"method.r": {"type": "int", "low": 0, "high": 8}}, [],
     "value 0 from the range is not valid for 'method.r': Input should be greater than or equal to 1"),
    ({"train.lr": {"type": "float", "low": 0, "high": 1e-3, "log": True}}, [], "log scale needs low > 0"),
    ({"method.r": {"type": "int", "low": 2.5, "high": 8}}, [], "int range needs whole numbers"),
    ({"train.lr": {"type": "float", "low": 1e-3, "high": 1e-5}}, [],
     "field 'sweep.space.train.lr': Value error, float needs `low` <= `high`"),
    ({"method.name": {"type": "categorical", "choices": ["lora", "qlora"]}}, [],
     "value 'qlora' from the range is not valid for 'method.name'"),
    ({"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3}}, ["sweep.metric=accuracy"],
     "field 'sweep.metric': 'accuracy' is a task metric"),
    ({"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3}}, ["data.split.validation=0"],
     "field 'data.split': sweeps on validation loss need a validation split"),
])
def test_bad_search_space_is_one_clear_line(recipe_file, tmp_path, space, overrides, expected):
    recipe = recipe_file(sweep={"space": space})
    with pytest.raises(TunesmithError) as err:
        sweep(recipe, overrides)
    msg = str(err.value)
    assert "\n" not in msg and expected in msg and msg.startswith(str(recipe)), msg
    assert not (tmp_path / "runs" / "tiny-sweep").exists()


def test_a_changed_search_space_does_not_mix_into_an_old_study(recipe_file, tmp_path):
    sweep_dir = tmp_path / "runs" / "tiny-sweep"
    sweep_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{sweep_dir / 'study.db'}")
    study.set_user_attr("space", {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3}})
    study.set_user_attr("metric", "val_loss")
    with pytest.raises(TunesmithError, match="different sweep.space"):
        sweep(recipe_file(sweep={"space": SPACE}))
