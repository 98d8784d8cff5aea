"""`tunesmith runs list|compare`: find run directories, summarise them, compare configs, metrics and loss curves."""
from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
from pathlib import Path
from typing import List, Optional

import typer
import yaml

from .errors import TunesmithError
from .fsutil import atomic_write_text

# ------------------------------------------------------------------------------------ reading

def read_json(path: str | Path) -> dict | None:
    """A JSON file's content, or None when missing or torn."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file (a torn last line of an interrupted run is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


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


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def eval_metrics(run_dir: str | Path) -> dict[str, float]:
    """Final evaluation results per system: ``tuned.accuracy``, ``base.val_loss``, ``few_shot.accuracy``..."""
    data = read_json(Path(run_dir) / "eval" / "report_data.json") or {}
    out: dict[str, float] = {}
    for section in ("metrics", "loss"):
        for system, values in (data.get(section) or {}).items():
            for k, v in (values or {}).items() if isinstance(values, dict) else ():
                if _num(v) and k != "tokens":
                    out[f"{system}.{k}"] = float(v)
    for section in ("baselines", "forgetting"):     # other systems' results, when the run has them
        block = data.get(section)
        if isinstance(block, dict):
            prefix = "" if section == "baselines" else "forgetting."
            for k, v in flatten(block).items():
                if _num(v):
                    out[prefix + k.replace(".metrics.", ".")] = float(v)
    return out


TRAINING_STATS = ("steps", "tokens", "tokens_per_s", "wall_s", "best_step", "best_val_loss", "early_stopped",
                  "final_train_loss", "trainable_parameters")


def training_stats(run_dir: str | Path) -> dict:
    t = read_json(Path(run_dir) / "train.json") or {}
    return {k: t[k] for k in TRAINING_STATS if k in t}


def is_run_dir(path: Path) -> bool:
    return (path / "recipe.yaml").is_file() and (path / "run.json").is_file()


def find_runs(root: str | Path) -> list[Path]:
    """Run directories directly under ``root`` and the trial runs of sweeps (``*-sweep/trials/*``)."""
    root = Path(root)
    if not root.is_dir():
        raise TunesmithError("runs folder not found; expected a folder of run directories", file=str(root))
    found = [p for p in root.iterdir() if p.is_dir() and is_run_dir(p)]
    for sweep_dir in root.glob("*-sweep"):
        found += [p for p in (sweep_dir / "trials").glob("*") if p.is_dir() and is_run_dir(p)]
    return found


def _recipe(run_dir: Path) -> dict:
    try:
        return yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _status(run_dir: Path, stages: dict) -> str:
    if "pruned" in stages:
        return "pruned"        # a sweep stopped this trial early
    if "run" in stages or "export" in stages:
        return "complete"
    for stage in ("eval", "train"):
        if stage in stages:
            return {"eval": "evaluated", "train": "trained"}[stage]
    if (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file():
        return "incomplete"   # training started: running now, or interrupted (resume with --resume)
    return "prepared" if "prepare" in stages else "empty"


_LOWER_IS_BETTER = ("loss", "perplexity", "wall_s")


def _headline(recipe: dict, run_dir: Path) -> dict | None:
    summary = read_json(run_dir / "eval" / "summary.json") or {}
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
    best = (read_json(run_dir / "train.json") or {}).get("best_val_loss")
    return {"metric": "best_val_loss", "base": None, "tuned": best} if best is not None else None


def run_summary(run_dir: str | Path) -> dict:
    """One run's row: name, created, task, model, method, stages, status, headline, train wall time."""
    run_dir = Path(run_dir)
    info = read_json(run_dir / "run.json") or {}
    recipe = _recipe(run_dir)
    stages = info.get("stages") or {}
    train = read_json(run_dir / "train.json") or {}
    parent = run_dir.parent
    return {"name": run_dir.name, "path": str(run_dir), "created": info.get("created"),
            "task": recipe.get("task"), "model": (recipe.get("model") or {}).get("name"),
            "method": (recipe.get("method") or {}).get("name"), "stages": list(stages),
            "status": _status(run_dir, stages), "headline": _headline(recipe, run_dir),
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
        raise TunesmithError("not a tunesmith run directory (no recipe.yaml/run.json)", file=str(p))
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
        metrics["validation.best_perplexity"] = [math.exp(v) if _num(v) and v < 50 else None for v in best_val]
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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = False
    colors = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#1b7c83", "#6e7781", "#bf3989"]
    for i, (path, name) in enumerate(zip(paths, names)):
        recs = read_jsonl(path / "metrics.jsonl")
        train = [(r["step"], r["loss"]) for r in recs if r.get("type") == "train" and _num(r.get("loss"))]
        val = [(r["step"], r["val_loss"]) for r in recs if r.get("type") == "eval" and _num(r.get("val_loss"))]
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
    fig.tight_layout()
    return png_bytes(fig)


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1f2328;line-height:1.45}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f6f8fa}.best{color:#1a7f37;font-weight:600}
.meta{color:#57606a}img{max-width:100%}code{background:#f6f8fa;padding:.1em .3em;border-radius:3px}
"""


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e3 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def html_table(header: list[str], rows: list[list], best: list[int | None] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            cls = ' class="best"' if best and best[i] is not None and j == best[i] + 1 else ""
            cells.append(f"<td{cls}>{html.escape(v if isinstance(v, str) and j == 0 else fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def img_tag(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _best_index(key: str, values: list) -> int | None:
    nums = [(v, i) for i, v in enumerate(values) if _num(v) and not math.isnan(v)]
    if len(nums) < 2 or len({v for v, _ in nums}) == 1:
        return None
    lower = any(s in key for s in _LOWER_IS_BETTER)
    return (min(nums) if lower else max(nums))[1]


def compare_html(result: dict, png: bytes | None) -> str:
    names = [r["name"] for r in result["runs"]]
    header = ["", *names]
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>tunesmith: compare runs</title>"
              f"<style>{CSS}</style></head><body><h1>Run comparison</h1>"),
             "<p class='meta'>" + "<br>".join(html.escape(r["path"]) for r in result["runs"]) + "</p>"]
    parts += ["<h2>Configuration differences</h2>",
              html_table(header, [[k, *v] for k, v in result["config"].items()]) if result["config"]
              else "<p>The runs' recipes are identical.</p>"]
    rows = [[k, *v] for k, v in result["metrics"].items()]
    parts += ["<h2>Metrics</h2>", html_table(header, rows, [_best_index(r[0], r[1:]) for r in rows])
              if rows else "<p>No metrics yet.</p>"]
    rows = [[k, *v] for k, v in result["training"].items()]
    parts += ["<h2>Training</h2>", html_table(header, rows) if rows else "<p>No training yet.</p>"]
    if png:
        parts += ["<h2>Loss curves</h2>", img_tag(png, "Training and validation loss of each run")]
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------ CLI

runs_app = typer.Typer(no_args_is_help=True, help="List and compare run directories.")


def _console():
    from rich.console import Console
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def _headline_text(h: dict | None) -> str:
    if not h:
        return "—"
    if h.get("base") is None:
        return f"{h['metric']} {fmt(h['tuned'])}"
    return f"{h['metric']} {fmt(h['base'])} → {fmt(h['tuned'])}"


def _duration(s) -> str:
    if not _num(s):
        return "—"
    s = float(s)
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


@runs_app.command("list")
def list_command(root: str = typer.Option("runs", "--root", help="Folder holding the run directories."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """List runs: created, task, model, method, status, headline metric (base → tuned), train time."""
    rows = list_runs(root)
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    from rich.table import Table
    t = Table(title=f"runs in {root}")
    for col in ("run", "created", "task", "model", "method", "status", "headline (base → tuned)", "train time"):
        t.add_column(col, no_wrap=col in ("run", "created"))
    for r in rows:
        model = r["model"] or "—"
        t.add_row(r["name"] if not r["sweep"] else f"{r['sweep']}/{r['name']}", r["created"] or "—",
                  r["task"] or "—", Path(model).name if "/" in model else model, r["method"] or "—",
                  r["status"], _headline_text(r["headline"]), _duration(r["train_wall_s"]))
    _console().print(t)
    if not rows:
        _console().print(f"no runs under {root}")


@runs_app.command("compare")
def compare_command(run_dirs: List[str] = typer.Argument(..., help="Two or more run directories."),
                    html_file: Optional[str] = typer.Option(None, "--html", help="Also write a self-contained HTML "
                                                                                   "comparison with loss curves.")):
    """Compare runs: config differences, metrics side by side, training statistics."""
    from rich.table import Table
    result = compare_runs(run_dirs, html_out=html_file)
    names = [r["name"] for r in result["runs"]]
    c = _console()
    for title, section in (("config differences", "config"), ("metrics", "metrics"), ("training", "training")):
        if not result[section]:
            c.print(f"{title}: none" if section != "config" else "config differences: none (same recipe)")
            continue
        t = Table(title=title)
        t.add_column("")
        for n in names:
            t.add_column(n, justify="right")
        for k, values in result[section].items():
            best = _best_index(k, values) if section == "metrics" else None
            t.add_row(k, *[f"[bold green]{fmt(v)}[/]" if i == best else fmt(v) for i, v in enumerate(values)])
        c.print(t)
    if result.get("html"):
        c.print(f"HTML: {result['html']}")


__all__ = [
    "compare_runs",
    "eval_metrics",
    "find_runs",
    "flatten",
    "list_runs",
    "read_json",
    "read_jsonl",
    "run_summary",
    "runs_app",
    "training_stats",
]
