"""`tunesmith runs list|compare`: find run directories, summarise them, compare configs, metrics and loss curves."""
from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from .errors import TunesmithError
from .fsutil import atomic_write_text
from .render import esc, figure, html_page, html_table, img_tag, is_number, png_bytes
from .rundir import INFO, RECIPE, Layout, find_runs, is_run_dir

# ------------------------------------------------------------------------------------ reading

LEAVES = frozenset({"sweep.space"})    # mappings shown as one value (their keys are dotted already)


def flatten(tree: dict, prefix: str = "", leaves: frozenset = LEAVES) -> dict:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}`` (lists and ``leaves`` stay values)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in leaves:
            out.update(flatten(v, key + ".", leaves))
        else:
            out[key] = v
    return out


def eval_metrics(run_dir: str | Path) -> dict[str, float]:
    """Final evaluation results per system: ``tuned.accuracy``, ``base.val_loss``, ``few_shot.accuracy``..."""
    data = Layout(run_dir).load_json("eval/report_data.json") or {}
    out: dict[str, float] = {}
    for section in ("metrics", "loss"):
        for system, values in (data.get(section) or {}).items():
            for k, v in (values or {}).items() if isinstance(values, dict) else ():
                if is_number(v) and k != "tokens":
                    out[f"{system}.{k}"] = float(v)
    for section in ("baselines", "forgetting"):     # other systems' results, when the run has them
        block = data.get(section)
        if isinstance(block, dict):
            prefix = "" if section == "baselines" else "forgetting."
            for k, v in flatten(block).items():
                if is_number(v):
                    out[prefix + k.replace(".metrics.", ".")] = float(v)
    return out


TRAINING_STATS = ("steps", "tokens", "tokens_per_s", "wall_s", "best_step", "best_val_loss", "early_stopped",
                  "final_train_loss", "trainable_parameters")


def training_stats(run_dir: str | Path) -> dict:
    t = Layout(run_dir).load_json("train.json") or {}
    return {k: t[k] for k in TRAINING_STATS if k in t}


def _recipe(run_dir: Path) -> dict:
    # the C loader (libyaml) when PyYAML has it: listing many runs reads every recipe
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(Layout(run_dir).recipe_path.read_text(encoding="utf-8"), Loader=loader) or {}
    except (OSError, yaml.YAMLError):
        return {}


_LOWER_IS_BETTER = ("loss", "perplexity", "wall_s")


def _headline(recipe: dict, run_dir: Path) -> dict | None:
    summary = Layout(run_dir).load_json("eval/summary.json") or {}
    tuned = (summary.get("tuned") or {}).get("metrics") or {}
    base = ((summary.get("base") or {}).get("metrics")) or {}
    if tuned:
        preferred = {"classification": "accuracy", "qa": "exact_match", "summarization": "rougeL"}.get(
            recipe.get("task"))
        key = preferred if preferred in tuned else next(iter(tuned))
        return {"metric": key, "base": base.get(key), "tuned": tuned[key]}
    tuned_loss = (summary.get("tuned") or {}).get("loss") or {}
    if "perplexity" in tuned_loss:
        return {"metric": "perplexity", "base": ((summary.get("base") or {}).get("loss") or {}).get("perplexity"),
                "tuned": tuned_loss["perplexity"]}
    best = (Layout(run_dir).load_json("train.json") or {}).get("best_val_loss")
    return {"metric": "best_val_loss", "base": None, "tuned": best} if best is not None else None


def run_summary(run_dir: str | Path) -> dict:
    """One run's row: name, created, task, model, method, stages, status, headline, train wall time."""
    run_dir = Path(run_dir)
    layout = Layout(run_dir)
    info = layout.info()
    recipe = _recipe(run_dir)
    stages = info.get("stages") or {}
    train = layout.load_json("train.json") or {}
    parent = run_dir.parent
    return {"name": run_dir.name, "path": str(run_dir), "created": info.get("created"),
            "task": recipe.get("task"), "model": (recipe.get("model") or {}).get("name"),
            "method": (recipe.get("method") or {}).get("name"), "stages": list(stages),
            "status": layout.status(), "headline": _headline(recipe, run_dir),
            "train_wall_s": train.get("wall_s"), "run_wall_s": (stages.get("run") or {}).get("wall_s"),
            "sweep": parent.parent.name if parent.name == "trials" and parent.parent.name.endswith("-sweep")
            else None}


def list_runs(root: str | Path = "runs") -> list[dict]:
    """Every run under ``root`` (sweep trials included), oldest first."""
    rows = [run_summary(p) for p in find_runs(root)]
    return sorted(rows, key=lambda r: (r["created"] or "", r["path"]))


# ------------------------------------------------------------------------------------ compare

def _check_run(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise TunesmithError("run directory not found; expected a folder like runs/NAME-001", file=str(p))
    if not is_run_dir(p):
        raise TunesmithError(f"not a tunesmith run directory (no {RECIPE}/{INFO})", file=str(p))
    return p


def _differs(values: list) -> bool:
    return any(json.dumps(v, sort_keys=True, default=str) != json.dumps(values[0], sort_keys=True, default=str)
               for v in values[1:])


_MISSING = object()


def compare_runs(run_dirs: list[str | Path], html_out: str | Path | None = None) -> dict:
    """Config differences, metrics and training statistics side by side (optionally as HTML)."""
    if len(run_dirs) < 2:
        raise TunesmithError(f"compare needs at least two run directories, got {len(run_dirs)}")
    paths = [_check_run(p) for p in run_dirs]
    names = _unique_names(paths)
    configs = [flatten(_recipe(p)) for p in paths]
    config_keys = sorted(set().union(*configs))
    config = {k: [c.get(k, None) for c in configs] for k in config_keys
              if _differs([c.get(k, _MISSING) for c in configs])}
    metric_rows = [eval_metrics(p) for p in paths]
    train_rows = [training_stats(p) for p in paths]
    metrics: dict[str, list] = {}
    best_val = [t.get("best_val_loss") for t in train_rows]
    if any(v is not None for v in best_val):
        metrics["validation.best_val_loss"] = best_val
        metrics["validation.best_perplexity"] = [math.exp(v) if is_number(v) and v < 50 else None for v in best_val]
    for k in sorted(set().union(*metric_rows), key=_metric_order):
        metrics[k] = [m.get(k) for m in metric_rows]
    training = {k: [t.get(k) for t in train_rows] for k in TRAINING_STATS if any(k in t for t in train_rows)}
    result = {"runs": [{"name": n, "path": str(p)} for n, p in zip(names, paths)],
              "config": config, "metrics": metrics, "training": training}
    if html_out:
        html_out = Path(html_out)
        atomic_write_text(html_out, compare_html(result, loss_overlay_png(paths, names)))
        result["html"] = str(html_out)
    return result


def _metric_order(key: str):
    system, _, name = key.partition(".")
    return ({"tuned": 0, "base": 1}.get(system, 2), system, name)


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]


def loss_overlay_png(paths: list[Path], names: list[str]) -> bytes | None:
    """Training loss (thin lines) and validation loss (markers) of several runs on one plot."""
    fig = figure(8, 4)
    ax = fig.add_subplot()
    drawn = False
    colors = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#1b7c83", "#6e7781", "#bf3989"]
    for i, (path, name) in enumerate(zip(paths, names)):
        recs = Layout(path).metrics()
        train = [(r["step"], r["loss"]) for r in recs if r.get("type") == "train" and is_number(r.get("loss"))]
        val = [(r["step"], r["val_loss"]) for r in recs if r.get("type") == "eval" and is_number(r.get("val_loss"))]
        color = colors[i % len(colors)]
        if train:
            ax.plot(*zip(*train), color=color, linewidth=1, alpha=0.55, label=f"{name} train")
            drawn = True
        if val:
            ax.plot(*zip(*val), color=color, linewidth=2, marker="o", markersize=4, label=f"{name} val")
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return png_bytes(fig)


def best_index(key: str, values: list) -> int | None:
    nums = [(v, i) for i, v in enumerate(values) if is_number(v) and not math.isnan(v)]
    if len(nums) < 2 or len({v for v, _ in nums}) == 1:
        return None
    lower = any(s in key for s in _LOWER_IS_BETTER)
    return (min(nums) if lower else max(nums))[1]


def compare_html(result: dict, png: bytes | None) -> str:
    names = [r["name"] for r in result["runs"]]
    header = ["", *names]
    parts = ["<h1>Run comparison</h1>",
             "<p class='meta'>" + "<br>".join(esc(r["path"]) for r in result["runs"]) + "</p>"]
    parts += ["<h2>Configuration differences</h2>",
              html_table(header, [[k, *v] for k, v in result["config"].items()]) if result["config"]
              else "<p>The runs' recipes are identical.</p>"]
    rows = [[k, *v] for k, v in result["metrics"].items()]
    parts += ["<h2>Metrics</h2>", html_table(header, rows, [best_index(r[0], r[1:]) for r in rows])
              if rows else "<p>No metrics yet.</p>"]
    rows = [[k, *v] for k, v in result["training"].items()]
    parts += ["<h2>Training</h2>", html_table(header, rows) if rows else "<p>No training yet.</p>"]
    if png:
        parts += ["<h2>Loss curves</h2>", img_tag(png, "Training and validation loss of each run")]
    return html_page("tunesmith: compare runs", parts)


__all__ = [
    "best_index",
    "compare_runs",
    "eval_metrics",
    "flatten",
    "list_runs",
    "run_summary",
    "training_stats",
]
