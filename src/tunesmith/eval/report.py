"""The run report: recommendation, systems side by side, base vs tuned, plots and examples (MD + HTML)."""
from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

from ..fsutil import atomic_write_bytes, atomic_write_text
from ..render import CSS, esc, html_table, img_tag, is_number
from ..rundir import Layout
from .metrics import LOWER_IS_BETTER, UNPARSED
from . import report_decision
from .plots import calibration_png, confusion_png, gain_loss_png, lengths_png, loss_plot_png, metric_bars_png

_LOSS_ROWS = (("val_loss", "Held-out loss"), ("perplexity", "Perplexity"))
_METRIC_TITLES = {
    "exact_match": "Exact match", "accuracy": "Accuracy", "macro_precision": "Macro precision",
    "macro_recall": "Macro recall", "macro_f1": "Macro F1", "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "bleu": "BLEU",
    "logp_preference_accuracy": "Prefers the chosen reply (log-prob)", "reward_accuracy": "Reward accuracy",
    "reward_margin": "Reward margin", "logp_margin": "Log-prob margin (chosen − rejected)",
}
_FRACTIONS = frozenset({"exact_match", "accuracy", "macro_precision", "macro_recall", "macro_f1",
                        "logp_preference_accuracy", "reward_accuracy"})
_DASH = "—"

# the shared base look plus the report's own rules (narrower page, better/worse deltas, examples)
_CSS = CSS + """body{max-width:1000px}h1{margin-bottom:.2em}
.better{color:#1a7f37;font-weight:600}.worse{color:#cf222e;font-weight:600}
.diag{background:#dafbe1}table.text td{text-align:left}.rec{border-left:4px solid #0969da;background:#f6f8fa;padding:.2em 1em}.ex{border:1px solid #d0d7de;border-radius:6px;padding:.4em 1em;margin:1em 0}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:.5em;border-radius:4px;
margin:.2em 0 .6em}.ok{color:#1a7f37}.bad{color:#cf222e}
"""


# ----------------------------------------------------------------------------- formatting

def _base(metric: str) -> str:
    """``task/metric`` (multi-task runs) -> ``metric``."""
    return metric.rsplit("/", 1)[-1]


def _title(metric: str, titles: dict) -> str:
    task, _, name = metric.rpartition("/")
    title = titles.get(name, name)
    return f"{task}: {title}" if task else title


def _fmt(metric: str, value) -> str:
    metric = _base(metric)
    if not is_number(value):
        return _DASH
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if metric in _FRACTIONS:
        return f"{100 * value:.1f}%"
    return f"{value:.4f}" if metric == "val_loss" else f"{value:.2f}"


def _delta(metric: str, base, tuned) -> tuple[str, str]:
    """Signed change with an arrow, and ``better``/``worse``/``""`` for colouring."""
    metric = _base(metric)
    if not (is_number(base) and is_number(tuned)):
        return _DASH, ""
    d = tuned - base
    if not math.isfinite(d):
        return "n/a", ""
    if d == 0:
        return "±0", ""
    arrow = "▲" if d > 0 else "▼"
    if metric in _FRACTIONS:
        text = f"{arrow} {100 * d:+.1f} pp"
    else:
        text = f"{arrow} {d:+.4f}" if metric == "val_loss" else f"{arrow} {d:+.2f}"
    better = (d < 0) if metric in LOWER_IS_BETTER else (d > 0)
    return text, "better" if better else "worse"


def _comparison_rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    """(title, base, tuned, delta, css class) for losses then generation metrics."""
    loss = results.get("loss") or {}
    metrics = results.get("metrics") or {}
    losses = {side: {k: v for k, v in (loss.get(side) or {}).items() if _base(k) in dict(_LOSS_ROWS)}
              for side in ("base", "tuned")}
    values = {side: {**(metrics.get(side) or {}), **losses[side]} for side in ("base", "tuned")}
    titles = {**dict(_LOSS_ROWS), **_METRIC_TITLES}
    present = {**values["tuned"], **values["base"]}
    # Known rows in their fixed order (losses first), then any other metric as reported.
    names = [k for k in titles if k in present] + [k for k in present if k not in titles]
    rows = []
    for name in names:
        base, tuned = values["base"].get(name), values["tuned"].get(name)
        delta, cls = _delta(name, base, tuned)
        rows.append((_title(name, titles), _fmt(name, base), _fmt(name, tuned), delta, cls))
    return rows


def _duration(seconds) -> str:
    if not is_number(seconds):
        return _DASH
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def _training_items(results: dict) -> list[tuple[str, str]]:
    t = results.get("training") or {}
    c = results.get("counts") or {}

    def num(x, fmt="{:,}"):
        return fmt.format(x) if is_number(x) else _DASH

    early = t.get("early_stopped")
    return [
        ("Examples (train / validation / test)",
         f"{num(c.get('train'))} / {num(c.get('validation'))} / {num(c.get('test'))}"),
        ("Evaluated test examples", num(c.get("evaluated"))),
        ("Optimizer steps", num(t.get("steps"))),
        ("Kept checkpoint", _kept(t, num)),
        ("Early stopped", _DASH if early is None else ("yes" if early else "no")),
        ("Tokens processed", num(t.get("train_tokens"))),
        ("Throughput", num(t.get("tokens_per_s"), "{:,.0f} tokens/s")),
        ("Wall time", _duration(t.get("wall_s"))),
        *([("Processes", _processes(d))] if (d := t.get("distributed")) else []),
        *((str(k).capitalize(), str(v)) for k, v in (t.get("objective_notes") or {}).items()),
    ]


def _processes(d: dict) -> str:
    """How a multi-process run shared the work, e.g. "2 (fsdp: weights sharded; gloo)"."""
    how = {"ddp": "ddp: a whole copy each", "fsdp": "fsdp: weights sharded"}.get(d.get("strategy") or "ddp")
    rss = d.get("rank_peak_rss_mb")
    return f"{d.get('nproc')} ({how}; {d.get('backend') or '?'})" + (f", largest peak {rss:,.0f} MB" if rss else "")


def _kept(t: dict, num) -> str:
    """The step whose weights were kept and what chose it."""
    step = num(t.get("best_step"))
    on = t.get("selected_on")
    if not on or step == _DASH:
        return step
    if not is_number(t.get("best_val_loss")):
        return f"step {num(t.get('steps'))}, the last (no validation split)"
    if t.get("best_step") == 0:
        return "step 0, the fitted start (no training step beat it on validation)"
    if on == "val_loss":
        return f"step {step} (lowest validation loss)"
    score = f": {t['best_score']:.4g}" if is_number(t.get("best_score")) else ""
    return f"step {step} (best {on}{score})"


def _artifact_items(results: dict) -> list[tuple[str, str]]:
    a = results.get("artifacts") or {}
    return [("Adapter", a.get("adapter") or "not exported"),
            ("Merged model", a.get("merged") or "not exported")]


def _flip_items(results: dict) -> list[tuple[str, int | str]]:
    f = results.get("flips") or {}
    return [("Base wrong → tuned right", f.get("base_wrong_tuned_right", _DASH)),
            ("Base right → tuned wrong", f.get("base_right_tuned_wrong", _DASH))]


def _date(results: dict) -> str:
    return str(results.get("date") or datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))


def _header_items(results: dict) -> list[tuple[str, str]]:
    return [(k.capitalize(), str(results.get(k, _DASH))) for k in ("model", "method", "task")] \
        + [("Date", _date(results))]


# ----------------------------------------------------------------------------- markdown

def _md_cell(text) -> str:
    """Inline Markdown text: no raw HTML, no table breaks, on one line."""
    text = str(text).replace("\\", "\\\\").replace("<", "\\<").replace("|", "\\|")
    return text.replace("\n", " ")


def _md_table(header: list[str], rows: list[list], numeric: bool = True) -> str:
    """A table; with ``numeric`` every column but the first is right-aligned."""
    align = " ---: " if numeric else " --- "
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join([" --- "] + [align] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_block(text) -> str:
    """A fenced block that the text cannot close early."""
    text = str(text)
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text}\n{fence}"


def _md_confusion(side: str, d: dict) -> str:
    labels = d["labels"]
    rows = [[label, *counts] for label, counts in zip(labels, d["confusion"])]
    per_label = [[label, f"{100 * s['precision']:.1f}%", f"{100 * s['recall']:.1f}%",
                  f"{100 * s['f1']:.1f}%", s["support"]] for label, s in d["per_label"].items()]
    return "\n\n".join([
        f"### {side.capitalize()} model",
        _md_table(["reference \\ predicted", *labels, UNPARSED], rows),
        _md_table(["label", "precision", "recall", "F1", "support"], per_label)])


def _distillation_rows(results: dict) -> list[list[str]]:
    """Teacher vs student rows (size, layers, speed, task metrics) for distillation runs."""
    d = results.get("distillation")
    if not d:
        return []
    rows = []
    for side in ("teacher", "student"):
        x = d[side]
        tps = x.get("tokens_per_s")
        metrics = ", ".join(f"{k} {_fmt(k, v)}" for k, v in (x.get("metrics") or {}).items())
        loss = (x.get("loss") or {}).get("val_loss")
        rows.append([side, f"{x['parameters'] / 1e6:.1f}M", str(x["layers"]), f"{tps:.1f}" if tps else _DASH,
                     _fmt("val_loss", loss), metrics or _DASH])
    return rows


_DISTILL_HEADER = ["model", "parameters", "layers", "tokens/s", "held-out loss", "task metrics"]


LABEL_SAFE_NOTE = ("The same prompts answered with one of the labels (each label scored as the whole reply by the "
                   "model's own probabilities): every answer is valid. Calibration compares the chosen label's "
                   "probability with how often it is right (ECE: expected calibration error).")
_LABEL_SAFE_HEADER = ["system", "free generation", "label-safe", "mean probability", "ECE",
                      "wrong: right label second"]


def _label_safe_rows(results: dict) -> list[list[str]]:
    """Free vs label-safe headline metric per system, with calibration and top-2 recoveries."""
    table = results.get("systems") or {}
    rows = {r["system"]: r for r in table.get("rows") or []}
    key = table.get("headline")
    out = []
    for name, row in rows.items():
        free = rows.get(name.removesuffix("_label_safe"))
        cal = row.get("calibration") or {}
        if not name.endswith("_label_safe") or free is None or not key:
            continue
        out.append([free["label"], _fmt(key, free["metrics"].get(key)), _fmt(key, row["metrics"].get(key)),
                    _fmt("p", cal.get("mean_confidence")), _fmt("p", cal.get("ece")),
                    f"{cal.get('second_choice_right', 0)} of {cal.get('wrong', 0)}"])
    return out


def _markdown(results: dict, images: dict[str, bytes]) -> str:
    mark = {True: "✓", False: "✗"}
    out = [f"# Tunesmith report: {_md_cell(results.get('name', 'run'))}", "",
           "  \n".join(f"**{k}:** {_md_cell(v)}" for k, v in _header_items(results)), ""]
    out += report_decision.markdown(results, _fmt, lambda k: _title(k, _METRIC_TITLES), _md_table, _md_cell)
    if "systems" in images:
        out += ["![Metrics by system](systems.png)", ""]
    out += ["## Base vs tuned", "",
           _md_table(["metric", "base", "tuned", "delta"], [r[:4] for r in _comparison_rows(results)]),
           ""]
    out += report_decision.lineage_markdown(results, _fmt, _md_table,
                                            "lineage.png" if "lineage" in images else None)
    if _distillation_rows(results):
        out += ["## Teacher vs student", "", _md_table(_DISTILL_HEADER, _distillation_rows(results),
                                                      numeric=False), ""]
    if "loss" in images:
        out += ["## Loss curve", "", "![Training and validation loss](loss.png)", ""]
    if "lengths" in images:
        out += ["## Sequence lengths", "", "![Token lengths by split](lengths.png)", ""]
    label_details = results.get("label_details") or {}
    if label_details:
        out += ["## Confusion matrices", "", "Rows are the reference label, columns the label the "
                "answer gave (`unparsed`: no label found).", ""]
        if "confusion" in images:
            out += ["![Confusion matrices](confusion.png)", ""]
        out += [_md_confusion(side, label_details[side]) + "\n"
                for side in ("base", "tuned") if label_details.get(side)]
    if _label_safe_rows(results):
        out += ["## Label-safe decoding", "", LABEL_SAFE_NOTE, "",
                _md_table(_LABEL_SAFE_HEADER, _label_safe_rows(results)), ""]
        if "calibration" in images:
            out += ["![Calibration of the label probabilities](calibration.png)", ""]
    out += ["## Answers that changed", "", _md_table(["", "count"], _flip_items(results)), ""]
    examples = results.get("examples") or []
    for i, ex in enumerate(examples, 1):
        out += [f"### Example {i}", "", "**Prompt**", "", _md_block(ex.get("prompt", "")), "",
                "**Reference**", "", _md_block(ex.get("reference", "")), "",
                f"**Base** {mark.get(ex.get('base_correct'), '')}", "", _md_block(ex.get("base", "")), "",
                f"**Tuned** {mark.get(ex.get('tuned_correct'), '')}", "",
                _md_block(ex.get("tuned", "")), ""]
    if not examples:
        out += ["No examples where the base and tuned answers differ in correctness.", ""]
    out += ["## Training", "", _md_table(["", ""], _training_items(results), numeric=False), "",
            "## Artifacts", "", _md_table(["", "path"], _artifact_items(results), numeric=False), ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- HTML

def _html_kv(items) -> str:
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in items) \
        + "</table>"


def _html_confusion(side: str, d: dict) -> str:
    labels = d["labels"]
    head = "".join(f"<th>{esc(x)}</th>" for x in [*labels, UNPARSED])
    body = []
    for i, (label, counts) in enumerate(zip(labels, d["confusion"])):
        cells = "".join(f'<td class="diag">{c}</td>' if j == i else f"<td>{c}</td>"
                        for j, c in enumerate(counts))
        body.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
    per_label = "".join(
        f"<tr><th>{esc(label)}</th><td>{100 * s['precision']:.1f}%</td>"
        f"<td>{100 * s['recall']:.1f}%</td><td>{100 * s['f1']:.1f}%</td><td>{s['support']}</td></tr>"
        for label, s in d["per_label"].items())
    return (f"<h3>{esc(side.capitalize())} model</h3>"
            f"<table><thead><tr><th>reference \\ predicted</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
            "<table><thead><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th>"
            f"<th>support</th></tr></thead><tbody>{per_label}</tbody></table>")


def _html_example(i: int, ex: dict) -> str:
    def verdict(ok) -> str:
        if ok is None:
            return ""
        return '<span class="ok">✓ correct</span>' if ok else '<span class="bad">✗ wrong</span>'

    return (f'<div class="ex"><h3>Example {i}</h3>'
            f"<b>Prompt</b><pre>{esc(ex.get('prompt', ''))}</pre>"
            f"<b>Reference</b><pre>{esc(ex.get('reference', ''))}</pre>"
            f"<b>Base</b> {verdict(ex.get('base_correct'))}<pre>{esc(ex.get('base', ''))}</pre>"
            f"<b>Tuned</b> {verdict(ex.get('tuned_correct'))}<pre>{esc(ex.get('tuned', ''))}</pre>"
            "</div>")


def _html(results: dict, images: dict[str, bytes]) -> str:
    name = results.get("name", "run")
    rows = "".join(
        f"<tr><th>{esc(title)}</th><td>{esc(base)}</td><td>{esc(tuned)}</td>"
        f'<td class="{cls or "same"}">{esc(delta)}</td></tr>'
        for title, base, tuned, delta, cls in _comparison_rows(results))
    parts = [
        f"<h1>Tunesmith report: {esc(name)}</h1>",
        '<p class="meta">' + " · ".join(f"<b>{esc(k)}:</b> {esc(v)}" for k, v in _header_items(results))
        + "</p>",
        *report_decision.html(results, _fmt, lambda k: _title(k, _METRIC_TITLES), esc, _html_kv,
                              img_tag(images.get("systems"), "Metrics by system")),
        "<h2>Base vs tuned</h2>",
        "<table><thead><tr><th>metric</th><th>base</th><th>tuned</th><th>delta</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>",
    ]
    parts += report_decision.lineage_html(results, _fmt, esc, img_tag(images.get("lineage"),
                                                                      "New-task gain vs old-task change"))
    if _distillation_rows(results):
        parts += ["<h2>Teacher vs student</h2>", html_table(_DISTILL_HEADER, _distillation_rows(results))]
    if images.get("loss"):
        parts += ["<h2>Loss curve</h2>", img_tag(images["loss"], "Training and validation loss")]
    if images.get("lengths"):
        parts += ["<h2>Sequence lengths</h2>", img_tag(images["lengths"], "Token lengths by split")]
    label_details = results.get("label_details") or {}
    if label_details:
        parts += ["<h2>Confusion matrices</h2>",
                  "<p>Rows are the reference label, columns the label the answer gave "
                  f"(<code>{UNPARSED}</code>: no label found).</p>", img_tag(images.get("confusion"),
                                                                          "Confusion matrices")]
        parts += [_html_confusion(side, label_details[side])
                  for side in ("base", "tuned") if label_details.get(side)]
    if _label_safe_rows(results):
        parts += ["<h2>Label-safe decoding</h2>", f"<p>{esc(LABEL_SAFE_NOTE)}</p>",
                  html_table(_LABEL_SAFE_HEADER, _label_safe_rows(results)),
                  img_tag(images.get("calibration"), "Calibration of the label probabilities")]
    parts += ["<h2>Answers that changed</h2>", _html_kv(_flip_items(results))]
    examples = results.get("examples") or []
    parts += [_html_example(i, ex) for i, ex in enumerate(examples, 1)] or [
        "<p>No examples where the base and tuned answers differ in correctness.</p>"]
    parts += ["<h2>Training</h2>", _html_kv(_training_items(results)),
              "<h2>Artifacts</h2>", _html_kv(_artifact_items(results))]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Tunesmith report: {esc(name)}</title><style>{_CSS}</style></head>\n"
            "<body>\n" + "\n".join(parts) + "\n</body></html>\n")


# ----------------------------------------------------------------------------- entry point

def write_reports(run_dir: str | Path, results: dict) -> tuple[Path, Path]:
    """Write ``report.md``, a self-contained ``report.html`` and ``loss.png`` into ``run_dir``.

    The loss curve is read from ``run_dir/metrics.jsonl``. ``results`` has this shape (any
    section may be missing; ``metrics["base"]`` and ``loss["base"]`` are absent when the base
    model was not evaluated)::

        {"name": str, "model": str, "method": str, "task": str, "date": str (optional),
         "metrics": {"base": {metric: float}, "tuned": {metric: float}},
         "loss": {"base": {"val_loss": float, "perplexity": float}, "tuned": {...}},
         "label_details": {"base": details, "tuned": details} | None,
             # details = metrics.details(...): {"labels", "confusion", "per_label", ...}
         "examples": [{"prompt": str, "reference": str, "base": str, "tuned": str,
                       "base_correct": bool, "tuned_correct": bool}],
         "counts": {"train": int, "validation": int, "test": int, "evaluated": int},
         "training": {"steps": int, "train_tokens": int, "tokens_per_s": float,
                      "wall_s": float, "best_step": int, "early_stopped": bool,
                      "objective_notes": {str: str} | None,
                      "distributed": {"nproc", "backend", "strategy", "rank_peak_rss_mb", ...} | None},
         "artifacts": {"adapter": str | None, "merged": str | None},
         "flips": {"base_wrong_tuned_right": int, "base_right_tuned_wrong": int}}

    Returns ``(report.md path, report.html path)``. Each file is written atomically.
    """
    run_dir = Path(run_dir)
    rows = (results.get("systems") or {}).get("rows") or []
    keys = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    images = {"loss": loss_plot_png(Layout(run_dir).metrics_path),
              "systems": metric_bars_png(rows, keys, _METRIC_TITLES),
              "confusion": confusion_png(results.get("label_details") or {}),
              "lengths": lengths_png(results.get("lengths") or {}, results.get("max_length"))}
    images["calibration"] = calibration_png({r["label"]: (r.get("calibration") or {}).get("curve") for r in rows
                                             if r.get("calibration")})
    if results.get("lineage"):
        images["lineage"] = gain_loss_png(results["lineage"], results["lineage"].get("earlier"))
    images = {k: v for k, v in images.items() if v}
    for name, png in images.items():
        atomic_write_bytes(run_dir / f"{name}.png", png)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    atomic_write_text(md_path, _markdown(results, images))
    atomic_write_text(html_path, _html(results, images))
    return md_path, html_path
