"""Report figures as PNG bytes (matplotlib, Agg): loss curves, metric bars by system, confusion, lengths."""
from __future__ import annotations

from pathlib import Path

from ..render import figure, is_number, png_bytes
from ..rundir import read_jsonl

PALETTE = {"majority": "#d0d7de", "base": "#8c959f", "few_shot": "#bf8700", "rag": "#8250df", "tuned": "#1a7f37",
           "tuned_rag": "#0969da"}


def loss_plot_png(metrics_jsonl_path: str | Path) -> bytes | None:
    """PNG of training loss and validation loss by step from ``metrics.jsonl``; None if no records.

    Reads records ``{"type": "train", "step", "loss"}`` and ``{"type": "eval", "step", "val_loss"}``.
    """
    path = Path(metrics_jsonl_path)
    if not path.is_file():
        return None
    train, val = [], []
    for rec in read_jsonl(path):
        if rec.get("type") == "train" and is_number(rec.get("loss")) and "step" in rec:
            train.append((rec["step"], rec["loss"]))
        elif rec.get("type") == "eval" and is_number(rec.get("val_loss")) and "step" in rec:
            val.append((rec["step"], rec["val_loss"]))
    if not train and not val:
        return None

    fig = figure()
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train loss", color="#0969da", linewidth=1.2, alpha=0.85)
    if val:
        ax.plot(*zip(*val), label="validation loss", color="#cf222e", marker="o", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return png_bytes(fig)


def _error_bars(row: dict, keys: list[str], values: list[float]):
    """Asymmetric error bars from the row's 95% intervals (None when the row has none)."""
    intervals = row.get("intervals") or {}
    if not any(intervals.get(k) for k in keys):
        return None
    lower, upper = [], []
    for k, v in zip(keys, values):
        ci = intervals.get(k)
        lower.append(max(v - ci[0], 0.0) if ci else 0.0)
        upper.append(max(ci[1] - v, 0.0) if ci else 0.0)
    return [lower, upper]


def metric_bars_png(rows: list[dict], keys: list[str], titles: dict[str, str]) -> bytes | None:
    """Grouped bars: one group per metric, one bar per system (majority class, base, few-shot, RAG,
    tuned, ...), with the 95% intervals as error bars."""
    keys = [k for k in keys if any(is_number(r["metrics"].get(k)) for r in rows)][:4]
    if not rows or not keys:
        return None
    import numpy as np
    fig = figure(7, 3.4)
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    x = np.arange(len(keys))
    for i, row in enumerate(rows):
        values = [row["metrics"].get(k) if is_number(row["metrics"].get(k)) else 0 for k in keys]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=row.get("label", row["system"]),
                      color=PALETTE.get(row["system"], None), yerr=_error_bars(row, keys, values),
                      error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#1f2328"})
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, [titles.get(k, k) for k in keys])
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(rows), 5), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return png_bytes(fig)


def confusion_png(details: dict[str, dict]) -> bytes | None:
    """Heatmaps of the confusion matrices (rows: reference label, columns: answered label)."""
    sides = [s for s in ("base", "tuned") if details.get(s)]
    if not sides:
        return None
    fig = figure(3.4 * len(sides), 3.2)
    for n, side in enumerate(sides, 1):
        d = details[side]
        matrix = d["confusion"]
        ax = fig.add_subplot(1, len(sides), n)
        ax.imshow(matrix, cmap="Greens")
        cols = list(d["labels"]) + ["unparsed"]
        ax.set_xticks(range(len(matrix[0])), cols[: len(matrix[0])], rotation=30, fontsize=8)
        ax.set_yticks(range(len(matrix)), d["labels"], fontsize=8)
        peak = max(max(r) for r in matrix) or 1
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                        color="white" if value > peak / 2 else "black")
        ax.set_title(f"{side}", fontsize=9)
        ax.set_xlabel("answered", fontsize=8)
        ax.set_ylabel("reference", fontsize=8)
    return png_bytes(fig)


def lengths_png(lengths: dict[str, list[int]], limit: int | None = None) -> bytes | None:
    """Histograms of token lengths per split (train/validation/test) with the max_length line."""
    splits = [s for s in ("train", "validation", "test") if lengths.get(s)]
    if not splits:
        return None
    fig = figure(7, 3.0)
    ax = fig.add_subplot()
    top = max(max(lengths[s]) for s in splits)
    bins = min(40, max(5, top // 8))
    for s in splits:
        ax.hist(lengths[s], bins=bins, range=(0, top + 1), alpha=0.55, label=f"{s} ({len(lengths[s])})",
                density=True)
    if limit:
        ax.axvline(limit, color="#cf222e", linestyle="--", linewidth=1, label=f"max_length {limit}")
    ax.set_xlabel("tokens per sequence (chat template applied)")
    ax.set_ylabel("share")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def gain_loss_png(backward: dict, earlier: list[dict] | None = None) -> bytes | None:
    """New-task gain (y) against the change on the old suites (x, mean over the ancestors), one point per
    continued version (this one, plus ``earlier`` continuations' backward.json); None without numbers."""
    points = []
    for b in [*(earlier or []), backward]:
        suites = b.get("suites") or {}
        own = suites.get(b.get("version")) or {}
        old = [s["delta"] for k, s in suites.items() if k != b.get("version") and is_number(s.get("delta"))]
        if is_number(own.get("delta")) and old:
            points.append((sum(old) / len(old), own["delta"], f"{b.get('version')} ({b.get('strategy')})"))
    if not points:
        return None
    fig = figure(5.5, 4.0)
    ax = fig.add_subplot()
    ax.axhline(0, color="#8c959f", linewidth=0.8)
    ax.axvline(0, color="#8c959f", linewidth=0.8)
    for x, y, label in points:
        ax.scatter([x], [y], color="#1a7f37" if x >= 0 else "#cf222e", s=40, zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("change on ancestors' test sets (old tasks)")
    ax.set_ylabel("gain on the new test set vs parent")
    ax.margins(0.25)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def calibration_png(curves: dict[str, list[list[float]]]) -> bytes | None:
    """Reliability diagram: observed accuracy against the top label's probability (binned), one line per
    system, with the diagonal of perfect calibration; None without curves."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig = figure(4.6, 3.8)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#8c959f", linestyle="--", linewidth=0.8, label="perfectly calibrated")
    for (name, curve), color in zip(curves.items(), ("#8c959f", "#1a7f37", "#0969da", "#bf8700")):
        ax.plot(*zip(*curve), marker="o", markersize=4, color=color if "base" not in name else "#8c959f",
                label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("probability of the chosen label")
    ax.set_ylabel("share right")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig)
