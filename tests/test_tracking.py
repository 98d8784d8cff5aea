"""MLflow tracking of run directories (read back with MlflowClient), idempotence across stages, TensorBoard files."""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from tunesmith import pipeline
from tunesmith.config import TrackingConfig
from tunesmith.tracking import log_run

FAST = {"max_steps": 10, "eval_every": 5, "save_every": 5}


def _copy(run: Path, dest: Path) -> Path:
    """A private copy of the shared finished run (these tests write into the run directory)."""
    return Path(shutil.copytree(run, dest / run.name, ignore=shutil.ignore_patterns("checkpoints")))


def _records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a network connection during the test (loopback stays allowed: the run's
    parity check talks to its own local server)."""
    attempts = []

    def refuse(self, address, *a, **k):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError("network disabled in tests")
        return real(self, address, *a, **k)
    real = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_a_run_logged_to_mlflow_reads_back(finished_run, tmp_path, capfd, no_network):
    from mlflow import MlflowClient
    run = _copy(finished_run.path, tmp_path)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["data"]["instruction"] = "x" * 7000
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    (tmp_path / "elsewhere").mkdir()
    capfd.readouterr()
    out = log_run(run, TrackingConfig(tracking_uri=uri, experiment="exp-a"))
    console = capfd.readouterr()
    assert console.out == "" and console.err == "", console          # quiet: no INFO lines, warnings, emoji
    assert out["tracking_uri"] == uri and not no_network
    client = MlflowClient(tracking_uri=uri)
    mr = client.get_run(out["run_id"])
    assert client.get_experiment(mr.info.experiment_id).name == "exp-a"
    assert mr.info.run_name == run.name and mr.info.status == "FINISHED"
    p = mr.data.params
    assert p["train.lr"] == "0.01" and p["method.r"] == "4" and p["method.name"] == "lora"
    assert p["data.labels.0"] == "negative" and p["name"] == "tiny" and p["export.gguf"] == "[]"
    assert p["data.instruction"] == "x" * 6000                       # truncated to MLflow's limit
    t = mr.data.tags
    assert (t["task"], t["method"], t["run_dir"]) == ("classification", "lora", str(run.resolve()))
    assert t["model"].endswith("tiny-llama0") or Path(t["model"]).is_dir()
    assert t["tunesmith_version"]
    evals, trains = _records(run, "eval"), _records(run, "train")
    history = client.get_metric_history(out["run_id"], "val_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
        [(r["step"], pytest.approx(r["val_loss"])) for r in evals]
    assert len(trains) > 10
    assert [m.step for m in client.get_metric_history(out["run_id"], "train_loss")] == \
        list(range(1, len(trains) + 1))
    for key in ("lr", "tokens_per_s", "val_perplexity", "grad_norm"):
        assert client.get_metric_history(out["run_id"], key), key
    data = json.loads((run / "eval" / "report_data.json").read_text())
    m = mr.data.metrics
    assert m["tuned.accuracy"] == pytest.approx(data["metrics"]["tuned"]["accuracy"])
    assert m["base.accuracy"] == pytest.approx(data["metrics"]["base"]["accuracy"])
    assert m["tuned.perplexity"] == pytest.approx(data["loss"]["tuned"]["perplexity"])
    best_step = json.loads((run / "train.json").read_text())["best_step"]        # the kept checkpoint's loss
    assert m["train.best_val_loss"] == pytest.approx(next(r["val_loss"] for r in evals if r["step"] == best_step))
    assert m["train_loss"] == pytest.approx(trains[-1]["loss"])
    arts = {a.path for a in client.list_artifacts(out["run_id"])} | \
        {a.path for a in client.list_artifacts(out["run_id"], "eval")}
    assert {"recipe.yaml", "report.html", "eval/summary.json", "train.json"} <= arts
    local = Path(client.download_artifacts(out["run_id"], "recipe.yaml", str(tmp_path / "dl")))
    assert local.read_text() == (run / "recipe.yaml").read_text()
    assert (tmp_path / "elsewhere" / "mlartifacts").is_dir()        # artifacts beside that store, not in cwd
    assert not (run.parent / "mlflow.db").exists()

    # a second call updates the same MLflow run without duplicating any history
    again = log_run(run, TrackingConfig(tracking_uri=uri, experiment="exp-a"))
    assert again["run_id"] == out["run_id"]
    assert len(client.search_runs([mr.info.experiment_id])) == 1
    assert len(client.get_metric_history(out["run_id"], "val_loss")) == len(evals)
    assert len(client.get_metric_history(out["run_id"], "tuned.accuracy")) == 1
    state = json.loads((run / "tracking.json").read_text())
    assert state["mlflow"][uri]["run_id"] == out["run_id"]


def test_later_stages_update_the_same_run_in_the_default_store(recipe_file, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    run = pipeline.prepare(recipe_file(train=FAST, eval={"compare_base": False}, export={"merged": False},
                                       tracking={"mlflow": True}))
    pipeline.train(run.path)
    first = log_run(run.path)                      # the recipe's own tracking section (mlflow on by default)
    store = tmp_path / "runs" / "mlflow.db"
    assert first["tracking_uri"] == f"sqlite:///{store}" and store.is_file()
    client = MlflowClient(tracking_uri=first["tracking_uri"])
    assert client.get_experiment_by_name("tiny") is not None           # experiment = recipe name
    assert "tuned.accuracy" not in client.get_run(first["run_id"]).data.metrics
    assert client.get_run(first["run_id"]).data.tags["stages"] == "prepare,train"
    pipeline.evaluate(run.path)
    second = log_run(run.path)
    assert second["run_id"] == first["run_id"]
    mr = client.get_run(first["run_id"])
    assert "tuned.accuracy" in mr.data.metrics and "base.accuracy" not in mr.data.metrics
    assert mr.data.tags["stages"] == "prepare,train,eval"
    assert len(client.get_metric_history(first["run_id"], "train_loss")) == 10
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()

    # $MLFLOW_TRACKING_URI wins over the default store; a new store gets its own MLflow run
    other = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    third = log_run(run.path)
    assert third["tracking_uri"] == other
    assert MlflowClient(tracking_uri=other).get_run(third["run_id"]).data.metrics["tuned.accuracy"] == \
        mr.data.metrics["tuned.accuracy"]
    assert set(json.loads((run.path / "tracking.json").read_text())["mlflow"]) == {first["tracking_uri"], other}


def test_tensorboard_event_files_hold_the_scalars(finished_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = _copy(finished_run.path, tmp_path)
    assert log_run(run, TrackingConfig(mlflow=False)) is None            # nothing enabled
    assert not (run / "tracking.json").exists()
    out = log_run(run, TrackingConfig(mlflow=False, tensorboard=True))
    log_run(run, TrackingConfig(mlflow=False, tensorboard=True))          # rewritten, not appended
    tb = Path(out["tensorboard"])
    assert tb == run / "tensorboard" and len(list(tb.glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(tb))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train_loss", "lr", "val_loss", "val_perplexity", "tuned.accuracy"} <= scalars
    evals = _records(run, "eval")
    assert [(e.step, e.value) for e in acc.Scalars("val_loss")] == \
        [(r["step"], pytest.approx(r["val_loss"], rel=1e-6)) for r in evals]
    assert [e.step for e in acc.Scalars("train_loss")] == list(range(1, len(_records(run, "train")) + 1))
    assert not (run / "tracking.json").exists()


def test_not_a_run_directory(tmp_path):
    from tunesmith.errors import TunesmithError
    with pytest.raises(TunesmithError, match="not a tunesmith run directory"):
        log_run(tmp_path)
