"""Report sections that answer "do we need to fine-tune?": systems table, recommendation, forgetting,
contamination — as Markdown and as HTML rows (formatting helpers are passed in by report.py)."""
from __future__ import annotations

from collections.abc import Callable

from ..render import html_table
from . import stats

_COST_HEADER = ["prompt tokens / request", "latency / request", "training time", "trainable params"]
_FLAG_STYLE = {"red": "border:2px solid #cf222e;background:#ffebe9;color:#82071e",
               "warning": "border:2px solid #bf8700;background:#fff8c5;color:#4d2d00"}


def _cost_cells(row: dict) -> list[str]:
    if row["system"] == stats.MAJORITY:
        return ["—", "—", "—", "—"]
    tokens = row.get("prompt_tokens")
    latency = row.get("latency_s")
    train = row.get("training_s")
    params = row.get("trainable_parameters")
    return [f"{tokens:.0f}" if tokens is not None else "—",
            f"{1000 * latency:.0f} ms" if latency is not None else "—",
            "—" if not train else (f"{train / 60:.1f} min" if train >= 60 else f"{train:.0f} s"),
            f"{params:,}" if params else "0"]


def _metric_cell(fmt: Callable, key: str, row: dict) -> str:
    value = fmt(key, row["metrics"].get(key))
    span = stats.span_text(key, (row.get("intervals") or {}).get(key))
    return f"{value} [{span}]" if span else value


def _answers_cell(row: dict) -> str:
    answers = row.get("answers") or {}
    parts = [f"{k} {v}" for k, v in answers.items() if k != stats.UNPARSED or v]
    return " · ".join(parts) + (" ⚠ collapsed" if row.get("collapsed") else "")


def _degenerate_cell(row: dict) -> str:
    d = row.get("degenerate") or {}
    return f"{d.get('empty', 0)} / {d.get('repetition', 0)}" + (" ⚠ collapsed" if row.get("collapsed") and
                                                                  not row.get("answers") else "")


def systems_rows(results: dict, fmt: Callable, title: Callable) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table: one row per system, metrics [95% CI] then answers and cost."""
    table = results.get("systems") or {}
    rows = table.get("rows") or []
    if not rows:
        return [], []
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["metrics"] if k not in keys]
    answers = any("answers" in r for r in rows)
    degenerate = any("degenerate" in r for r in rows)
    header = ["system", *[f"{title(k)} [95% CI]" for k in keys], *(["answers given"] if answers else []),
              *(["empty / looping answers"] if degenerate else []), *_COST_HEADER,
              "wrong→right / right→wrong vs base"]
    out = []
    for row in rows:
        f = row.get("flips_vs_base")
        flips = f"{f['wrong_to_right']} / {f['right_to_wrong']}" if f else "—"
        out.append([row["label"], *[_metric_cell(fmt, k, row) for k in keys],
                    *([_answers_cell(row)] if answers else []), *([_degenerate_cell(row)] if degenerate else []),
                    *_cost_cells(row), flips])
    return header, out


def delta_rows(results: dict, title: Callable) -> list[list[str]]:
    """The paired differences with the fine-tuned model: comparison, difference, 95% CI."""
    out = []
    for d in (results.get("systems") or {}).get("deltas") or []:
        key = d["metric"]
        out.append([f"{d.get('to_label', d['to'])} − {d.get('from_label', d['from'])}", title(key),
                    stats.gap_text(key, d["delta"], True), stats.interval_text(key, d["ci"])])
    return out


_DELTA_HEADER = ["comparison", "metric", "difference", "95% CI"]


def _bootstrap_note(results: dict) -> str:
    table = results.get("systems") or {}
    b = table.get("bootstrap") or {}
    if not b:
        return ""
    return (f"95% confidence intervals: {b['method']} ({b['resamples']} resamples, seed {b['seed']}); "
            "a difference whose interval contains 0 is not an established difference.")


def flag_items(results: dict) -> list[dict]:
    """Red flags and warnings for the top of the report (collapsed model, degenerate output)."""
    rec = results.get("recommendation") or {}
    return rec.get("flags") or (results.get("systems") or {}).get("flags") or []


def flags_markdown(results: dict, md_cell: Callable) -> list[str]:
    items = flag_items(results)
    if not items:
        return []
    return [*[f"> **{'🛑' if f['level'] == 'red' else '⚠'} {md_cell(f['text'])}**  " for f in items], ""]


def flags_html(results: dict, e: Callable) -> list[str]:
    return [f'<div class="flag {e(f["level"])}" style="{_FLAG_STYLE.get(f["level"], "")};padding:.5em 1em;'
            f'margin:1em 0;border-radius:6px;font-weight:600">{e(f["text"])}</div>' for f in flag_items(results)]


def recommendation_lines(results: dict) -> list[str]:
    rec = results.get("recommendation")
    if not rec:
        return []
    return [rec["text"], *rec.get("facts", [])]


def forgetting_items(results: dict) -> list[tuple[str, str]]:
    f = results.get("forgetting")
    if not f:
        return []
    if f.get("skipped"):
        return [("skipped", f["skipped"])]
    items = []
    if "perplexity_before" in f:
        items += [("general-text perplexity before", f"{f['perplexity_before']:.2f}"),
                  ("general-text perplexity after", f"{f['perplexity_after']:.2f}"),
                  ("change", f"{100 * f['perplexity_change']:+.1f}% (flag above {100 * f['threshold']:.0f}%)"),
                  ("documents", str(f.get("documents")))]
    if "prompts" in f:
        items += [("general prompts whose answer changed", f"{f['answers_changed']} of {f['prompts']}"),
                  ("answer similarity before/after (ROUGE-L)", f"{f['answer_similarity']:.1f}")]
    if rep := f.get("replay"):
        items.append(("replay (forgetting.replay)",
                      f"{rep['share']:.0%} general text, {rep['sequences']} sequences ({rep['reason']})"
                      if rep.get("sequences") else f"none ({rep.get('reason', 'set to 0')})"))
    items.append(("verdict", "FORGETTING FLAGGED: " + "; ".join(f["reasons"]) if f.get("flagged")
                  else "no forgetting beyond the threshold"))
    return items


def contamination_items(results: dict) -> list[tuple[str, str]]:
    c = results.get("contamination")
    if not c:
        return []
    return [("evaluated items", str(c["test_items"])),
            ("near-duplicates of a training item", f"{c['contaminated']} ({100 * c['fraction']:.1f}%)"),
            *([("... of which with the training item's answer", str(c["same_answer"]))]
              if "same_answer" in c else []),
            ("similarity threshold (Jaccard, character 5-grams)", f"{c['threshold']:.2f}")]


def contamination_listing(results: dict) -> list[dict]:
    return (results.get("contamination") or {}).get("items") or []


def markdown(results: dict, fmt: Callable, title: Callable, md_table: Callable, md_cell: Callable) -> list[str]:
    out: list[str] = flags_markdown(results, md_cell)
    lines = recommendation_lines(results)
    if lines:
        out += ["## Recommendation", "", f"**{md_cell(lines[0])}**", ""] + [f"- {md_cell(x)}" for x in lines[1:]] + [""]
    header, rows = systems_rows(results, fmt, title)
    if rows:
        n = (results.get("systems") or {}).get("n")
        out += ["## Fine-tuning vs the cheap alternatives", "",
                f"The same {n} held-out prompts through every system.", "",
                md_table(header, rows, numeric=False), ""]
        deltas = delta_rows(results, title)
        if deltas:
            out += [md_table(_DELTA_HEADER, deltas, numeric=False), ""]
        if _bootstrap_note(results):
            out += [md_cell(_bootstrap_note(results)), ""]
        if results.get("baselines_skipped"):
            out += [f"Baselines not run: {md_cell(results['baselines_skipped'])}.", ""]
    items = forgetting_items(results)
    if items:
        out += ["## Forgetting", "", md_table(["", ""], items, numeric=False), ""]
        for ex in (results.get("forgetting") or {}).get("examples", []):
            out += [f"- *{md_cell(ex['prompt'])}* before: {md_cell(ex['before'])} — after: {md_cell(ex['after'])}"]
        out.append("")
    items = contamination_items(results)
    if items:
        out += ["## Contamination", "", md_table(["", ""], items, numeric=False), ""]
        listing = contamination_listing(results)
        if listing:
            out += [md_table(["test line", "train line", "similarity", "test text"],
                             [[d["test_line"], d["train_line"], f"{d['similarity']:.2f}", md_cell(d["test_text"][:120])]
                              for d in listing], numeric=False), ""]
    return out


def html(results: dict, fmt: Callable, title: Callable, e: Callable, kv: Callable, bars_img: str) -> list[str]:
    parts: list[str] = flags_html(results, e)
    lines = recommendation_lines(results)
    if lines:
        parts += ['<h2>Recommendation</h2><div class="rec">', f"<p><b>{e(lines[0])}</b></p><ul>",
                  *[f"<li>{e(x)}</li>" for x in lines[1:]], "</ul></div>"]
    header, rows = systems_rows(results, fmt, title)
    if rows:
        n = (results.get("systems") or {}).get("n")
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        systems = [r["system"] for r in (results.get("systems") or {}).get("rows") or []]

        def tr(row, system):
            cls = ' class="worse"' if any(f.get("system") == system and f["level"] == "red"
                                          for f in flag_items(results)) else ""
            return f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
        body = "".join(tr(row, s) for row, s in zip(rows, systems) if s != stats.MAJORITY)
        # the majority-class row is a reference floor, not a system: it sits in the table's footer
        foot = "".join(tr(row, s) for row, s in zip(rows, systems) if s == stats.MAJORITY)
        parts += ["<h2>Fine-tuning vs the cheap alternatives</h2>",
                  f"<p>The same {e(n)} held-out prompts through every system.</p>",
                  f'<table class="systems"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
                  + (f"<tfoot>{foot}</tfoot>" if foot else "") + "</table>"]
        deltas = delta_rows(results, title)
        if deltas:
            parts.append(html_table(_DELTA_HEADER, [[str(c) for c in row] for row in deltas], attrs=' class="deltas"'))
        if _bootstrap_note(results):
            parts.append(f'<p class="meta">{e(_bootstrap_note(results))}</p>')
        parts.append(bars_img)
        if results.get("baselines_skipped"):
            parts.append(f"<p>Baselines not run: {e(results['baselines_skipped'])}.</p>")
    items = forgetting_items(results)
    if items:
        f = results.get("forgetting") or {}
        cls = "worse" if f.get("flagged") else "better"
        parts += ["<h2>Forgetting</h2>", kv(items).replace("<table>", f'<table class="{cls}">', 1)]
        examples = f.get("examples", [])
        if examples:
            parts.append(html_table(["general prompt", "before", "after"],
                                    [[str(x["prompt"]), str(x["before"]), str(x["after"])] for x in examples],
                                    attrs=' class="text"'))
    items = contamination_items(results)
    if items:
        parts += ["<h2>Contamination</h2>", kv(items)]
        listing = contamination_listing(results)
        if listing:
            parts.append(html_table(["test line", "train line", "similarity", "test text"],
                                    [[str(d["test_line"]), str(d["train_line"]), f"{d['similarity']:.2f}",
                                      d["test_text"][:160]] for d in listing], attrs=' class="text"'))
    return parts


# ----------------------------------------------------------------------------- lineage (continued versions)

def _score_cell(fmt: Callable, metric: str, value) -> str:
    return "—" if value is None else fmt(metric, value)


def lineage_rows(results: dict, fmt: Callable) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """``(header, version × suite rows, per-suite delta rows)`` of a continued version's backward
    evaluation (eval/backward.json, in ``results["lineage"]``); empty lists for other runs."""
    lin = results.get("lineage") or {}
    table = lin.get("table") or {}
    suites = table.get("suites") or []
    if not suites:
        return [], [], []
    metrics = table.get("metrics") or {}
    header = ["version"] + [f"{s} ({metrics.get(s, '')})" for s in suites]
    rows = [[v["version"]] + [_score_cell(fmt, metrics.get(s, ""), v["scores"].get(s)) for s in suites]
            for v in table.get("versions") or []]
    deltas = []
    for name, s in (lin.get("suites") or {}).items():
        d = s.get("delta")
        flips = s.get("flips") or {}
        deltas.append([name, s.get("ancestor", ""), "—" if d is None else f"{d:+.4f}", str(s.get("n", "")),
                       f"{flips.get('wrong_to_right', 0)} fixed / {flips.get('right_to_wrong', 0)} broken"])
    return header, rows, deltas


_LINEAGE_DELTA_HEADER = ["test suite", "compared with", "change", "items", "flips"]


def _lineage_intro(lin: dict) -> str:
    rep = lin.get("replay") or {}
    return (f"{lin.get('version')} continues {lin.get('parent')} with strategy **{lin.get('strategy')}**"
            + (f" ({rep.get('count', 0)} replayed examples, ratio {rep.get('ratio', 0):g})" if rep else "")
            + ". Scores on each version's test suite; the change is this version against the one compared "
              "with (its parent on the new suite, each ancestor's recorded score on its own suite).")


def lineage_markdown(results: dict, fmt: Callable, md_table: Callable, image: str | None) -> list[str]:
    header, rows, deltas = lineage_rows(results, fmt)
    if not header:
        return []
    out = ["## Lineage: backward transfer", "", _lineage_intro(results["lineage"]), "",
           md_table(header, rows), "", md_table(_LINEAGE_DELTA_HEADER, deltas, numeric=False), ""]
    if image:
        out += [f"![New-task gain vs old-task change]({image})", ""]
    return out


def lineage_html(results: dict, fmt: Callable, e: Callable, img: str) -> list[str]:
    header, rows, deltas = lineage_rows(results, fmt)
    if not header:
        return []
    intro = e(_lineage_intro(results["lineage"])).replace("**", "")
    return ["<h2>Lineage: backward transfer</h2>", f"<p>{intro}</p>", html_table(header, rows),
            html_table(_LINEAGE_DELTA_HEADER, deltas), img]
