"""`tunesmith runs list|compare`: tables over ``tunesmith.runs`` (imported inside the commands)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import typer

from .common import console

runs_app = typer.Typer(help="List and compare run directories.")


def headline_text(h: dict | None) -> str:
    """``metric base → tuned`` (or just the tuned value); a dash when the run has no headline yet."""
    from ..render import fmt
    if not h:
        return "—"
    if h.get("base") is None:
        return f"{h['metric']} {fmt(h['tuned'])}"
    return f"{h['metric']} {fmt(h['base'])} → {fmt(h['tuned'])}"


def duration(s) -> str:
    """Seconds as ``12.3s`` or ``4m05s``; a dash when unknown."""
    if not isinstance(s, (int, float)) or isinstance(s, bool) or math.isnan(s):
        return "—"
    s = float(s)
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


@runs_app.command("list")
def list_command(root: str = typer.Option("runs", "--root", help="Folder holding the run directories."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """List runs: created, task, model, method, status, headline metric (base → tuned), train time."""
    from ..runs import list_runs
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
                  r["status"], headline_text(r["headline"]), duration(r["train_wall_s"]))
    c = console()
    c.print(t)
    if not rows:
        c.print(f"no runs under {root}")


@runs_app.command("compare")
def compare_command(run_dirs: List[str] = typer.Argument(..., help="Two or more run directories."),
                    html_file: Optional[str] = typer.Option(None, "--html", help="Also write a self-contained HTML "
                                                                                   "comparison with loss curves.")):
    """Compare runs: config differences, metrics side by side, training statistics."""
    from rich.table import Table

    from ..render import fmt
    from ..runs import best_index, compare_runs
    result = compare_runs(run_dirs, html_out=html_file)
    names = [r["name"] for r in result["runs"]]
    c = console()
    for title, section in (("config differences", "config"), ("metrics", "metrics"), ("training", "training")):
        if not result[section]:
            c.print(f"{title}: none" if section != "config" else "config differences: none (same recipe)")
            continue
        t = Table(title=title)
        t.add_column("")
        for n in names:
            t.add_column(n, justify="right")
        for k, values in result[section].items():
            best = best_index(k, values) if section == "metrics" else None
            t.add_row(k, *[f"[bold green]{fmt(v)}[/]" if i == best else fmt(v) for i, v in enumerate(values)])
        c.print(t)
    if result.get("html"):
        c.print(f"HTML: {result['html']}")
