"""Experiment tracking: log a run directory to MLflow (params, metric curves, eval results, artifacts) and TensorBoard."""
from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path

import yaml

from .config import TrackingConfig
from .errors import TunesmithError
from .fsutil import atomic_write_json, publish_dir
from .rundir import RECIPE, Layout, read_json
from .runs import eval_metrics, flatten, training_stats

# MLflow 3 sends usage telemetry over the network unless told not to; tunesmith works offline.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ARTIFACTS = (RECIPE, "run.json", "train.json", "report.html", "report.md", "eval/summary.json")
_TRAIN_KEYS = {"loss": "train_loss", "lr": "lr", "grad_norm": "grad_norm", "tokens_per_s": "tokens_per_s",
               "epoch": "epoch"}
_EVAL_KEYS = {"val_loss": "val_loss", "perplexity": "val_perplexity"}
_TRAINING_STATS = ("best_val_loss", "wall_s", "tokens_per_s", "steps", "tokens", "trainable_parameters")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def curve_metrics(run_dir: Path) -> list[tuple[str, float, int]]:
    """(key, value, step) for every training/validation record in ``metrics.jsonl``."""
    out = []
    for rec in Layout(run_dir).metrics():
        kind, step = rec.get("type"), rec.get("step")
        if kind not in ("train", "eval") or not isinstance(step, int):
            continue
        names, prefix = (_TRAIN_KEYS, "train_") if kind == "train" else (_EVAL_KEYS, "val_")
        for k, v in rec.items():
            if k in ("type", "step") or not _num(v) or k == "tokens":
                continue
            key = names.get(k) or (k if k.startswith(prefix) else prefix + k)
            out.append((key, float(v), step))
    return out


def final_metrics(run_dir: Path) -> dict[str, float]:
    """Evaluation results per system (``tuned.accuracy``, ``base.val_loss``, ``few_shot.accuracy``, ...)
    and training statistics (``train.best_val_loss``, ``train.wall_s``, ...)."""
    out = eval_metrics(run_dir)
    for k, v in training_stats(run_dir).items():
        if k in _TRAINING_STATS and _num(v):
            out[f"train.{k}"] = float(v)
    return out


def default_store(run_dir: Path) -> Path:
    """The folder beside the runs that holds the local MLflow store (the recipe's output_dir)."""
    parent = Path(run_dir).resolve().parent
    if parent.name == "trials" and parent.parent.name.endswith("-sweep"):
        parent = parent.parent.parent          # sweep trials log beside the ordinary runs
    return parent


def resolve_uri(run_dir: Path, cfg: TrackingConfig) -> str:
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{default_store(run_dir) / 'mlflow.db'}"


def _artifact_location(uri: str, run_dir: Path) -> str | None:
    """Where artifacts go for stores without a server (else the server decides)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


@contextlib.contextmanager
def _quiet():
    """No INFO lines, warnings or emoji from mlflow/alembic on the console (mlflow sets its own
    logger level when first imported, so it is imported before the levels are lowered)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow  # noqa: F401
    names = ("mlflow", "alembic", "sqlalchemy")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _read_recipe(run_dir: Path) -> dict:
    path = Layout(run_dir).recipe_path
    if not path.is_file():
        raise TunesmithError(f"not a tunesmith run directory (no {RECIPE})", file=str(run_dir))
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _tags(run_dir: Path, recipe: dict) -> dict[str, str]:
    from . import __version__
    tags = {"task": str(recipe.get("task")), "method": str((recipe.get("method") or {}).get("name")),
            "model": str((recipe.get("model") or {}).get("name")), "run_dir": str(run_dir.resolve()),
            "tunesmith_version": __version__, "recipe_name": str(recipe.get("name")),
            "stages": ",".join(Layout(run_dir).stages())}
    parent = run_dir.resolve().parent
    if parent.name == "trials" and parent.parent.name.endswith("-sweep"):
        tags["sweep"] = parent.parent.name
    return tags


def log_run(run_dir: str | Path, cfg: TrackingConfig | None = None) -> dict | None:
    """Log a finished or partly finished run to MLflow (and TensorBoard when enabled).

    Idempotent: the MLflow run id is kept in ``<run_dir>/tracking.json`` and later calls (later
    stages) update the same MLflow run, adding only metric records not logged before. Returns
    ``{"tracking_uri", "experiment_id", "run_id", "tensorboard"}`` or None when tracking is off.
    """
    run_dir = Path(run_dir)
    recipe = _read_recipe(run_dir)
    if cfg is None:
        cfg = TrackingConfig.model_validate(recipe.get("tracking") or {})
    if not cfg.mlflow and not cfg.tensorboard:
        return None
    result: dict = {}
    if cfg.mlflow:
        result.update(_log_mlflow(run_dir, recipe, cfg))
    if cfg.tensorboard:
        result["tensorboard"] = str(write_tensorboard(run_dir))
    return result


def _log_mlflow(run_dir: Path, recipe: dict, cfg: TrackingConfig) -> dict:
    with _quiet():
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.utils.validation import (
            MAX_ENTITY_KEY_LENGTH,
            MAX_METRICS_PER_BATCH,
            MAX_PARAM_VAL_LENGTH,
            MAX_PARAMS_TAGS_PER_BATCH,
        )

        uri = resolve_uri(run_dir, cfg)
        state_path = Layout(run_dir).tracking_json
        state_all = read_json(state_path) or {}
        state = (state_all.get("mlflow") or {}).get(uri) or {}
        client = MlflowClient(tracking_uri=uri)
        experiment = cfg.experiment or str(recipe.get("name") or "tunesmith")
        try:
            run_id = state.get("run_id")
            if run_id:
                try:
                    info = client.get_run(run_id).info
                    if info.lifecycle_stage != "active":
                        run_id = None
                except MlflowException:
                    run_id = None
            if not run_id:
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    exp_id = client.create_experiment(experiment, artifact_location=_artifact_location(uri, run_dir))
                elif exp.lifecycle_stage != "active":
                    client.restore_experiment(exp.experiment_id)
                    exp_id = exp.experiment_id
                else:
                    exp_id = exp.experiment_id
                run_id = client.create_run(exp_id, run_name=run_dir.name).info.run_id
                state = {"experiment_id": exp_id, "run_id": run_id}
            now = int(time.time() * 1000)
            tags = [RunTag(k, v) for k, v in _tags(run_dir, recipe).items()]
            params = []
            if not state.get("params_logged"):
                params = [Param(k[:MAX_ENTITY_KEY_LENGTH], _param_value(v)[:MAX_PARAM_VAL_LENGTH])
                          for k, v in flatten(recipe).items()]
            done = state.get("logged_steps") or {}
            metrics = [Metric(k, v, now, step) for k, v, step in curve_metrics(run_dir)
                       if step > done.get(k, 0)]
            last_final = state.get("final") or {}
            final = final_metrics(run_dir)
            final_step = max([s for _, _, s in curve_metrics(run_dir)] or [0])
            metrics += [Metric(k, v, now, final_step) for k, v in final.items() if last_final.get(k) != v]
            for i in range(0, max(len(params), len(tags)), MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(run_id, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH],
                                 tags=tags[i:i + MAX_PARAMS_TAGS_PER_BATCH], synchronous=True)
            for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH], synchronous=True)
            for rel in ARTIFACTS:
                if (run_dir / rel).is_file():
                    client.log_artifact(run_id, str(run_dir / rel), artifact_path=str(Path(rel).parent)
                                        if "/" in rel else None)
            client.set_terminated(run_id, "FINISHED")
        except MlflowException as e:
            raise TunesmithError(f"MLflow tracking failed: {str(e).splitlines()[0]}", field="tracking.tracking_uri") \
                from None
        for m in metrics:
            if m.key not in final:
                done[m.key] = max(done.get(m.key, 0), m.step)
        state.update(params_logged=True, logged_steps=done, final=final, experiment=experiment)
        state_all.setdefault("mlflow", {})[uri] = state
        atomic_write_json(state_path, state_all)
        return {"tracking_uri": uri, "experiment_id": state["experiment_id"], "run_id": run_id}


def _param_value(v) -> str:
    if isinstance(v, (dict, list)):
        return yaml.safe_dump(v, default_flow_style=True, width=10 ** 9).strip()
    return "null" if v is None else str(v)


def write_tensorboard(run_dir: str | Path) -> Path:
    """(Re)write ``<run_dir>/tensorboard/`` from the same metrics as MLflow; replaced atomically."""
    import tempfile

    run_dir = Path(run_dir)
    try:
        with _quiet():
            from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TunesmithError("needs the tensorboard package; expected it installed "
                             "(pip install 'tunesmith[tensorboard]')", field="tracking.tensorboard") from None
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".tensorboard."))
    try:
        writer = SummaryWriter(log_dir=str(tmp))
        curves = curve_metrics(run_dir)
        for key, value, step in curves:
            writer.add_scalar(key, value, step)
        final_step = max([s for _, _, s in curves] or [0])
        for key, value in final_metrics(run_dir).items():
            writer.add_scalar(key, value, final_step)
        writer.close()
        publish_dir(tmp, run_dir / "tensorboard")
    except BaseException:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir / "tensorboard"


__all__ = ["curve_metrics", "final_metrics", "log_run", "resolve_uri", "write_tensorboard"]
