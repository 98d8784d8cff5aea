"""Report sections that answer "do we need to fine-tune?": systems table, recommendation, forgetting,
contamination — as Markdown and as HTML rows (formatting helpers are passed in by report.py)."""
from __future__ import annotations

from collections.abc import Callable

_COST_HEADER = ["prompt tokens / request", "latency / request", "training time", "trainable params"]


def _cost_cells(row: dict) -> list[str]:
    tokens = row.get("prompt_tokens")
    latency = row.get("latency_s")
    train = row.get("training_s")
    params = row.get("trainable_parameters")
    return [f"{tokens:.0f}" if tokens is not None else "—",
            f"{1000 * latency:.0f} ms" if latency is not None else "—",
            "—" if not train else (f"{train / 60:.1f} min" if train >= 60 else f"{train:.0f} s"),
            f"{params:,}" if params else "0"]


def systems_rows(results: dict, fmt: Callable, title: Callable) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table: one row per system, metrics then cost."""
    table = results.get("systems") or {}
    rows = table.get("rows") or []
    if not rows:
        return [], []
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["metrics"] if k not in keys]
    header = ["system", *[title(k) for k in keys], *_COST_HEADER, "wrong→right / right→wrong vs base"]
    out = []
    for row in rows:
        f = row.get("flips_vs_base")
        flips = f"{f['wrong_to_right']} / {f['right_to_wrong']}" if f else "—"
        out.append([row["label"], *[fmt(k, row["metrics"].get(k)) for k in keys], *_cost_cells(row), flips])
    return header, out


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
    items.append(("verdict", "FORGETTING FLAGGED: " + "; ".join(f["reasons"]) if f.get("flagged")
                  else "no forgetting beyond the threshold"))
    return items


def contamination_items(results: dict) -> list[tuple[str, str]]:
    c = results.get("contamination")
    if not c:
        return []
    return [("evaluated items", str(c["test_items"])),
            ("near-duplicates of a training item", f"{c['contaminated']} ({100 * c['fraction']:.1f}%)"),
            ("similarity threshold (Jaccard, character 5-grams)", f"{c['threshold']:.2f}")]


def contamination_listing(results: dict) -> list[dict]:
    return (results.get("contamination") or {}).get("items") or []


def markdown(results: dict, fmt: Callable, title: Callable, md_table: Callable, md_cell: Callable) -> list[str]:
    out: list[str] = []
    lines = recommendation_lines(results)
    if lines:
        out += ["## Recommendation", "", f"**{md_cell(lines[0])}**", ""] + [f"- {md_cell(x)}" for x in lines[1:]] + [""]
    header, rows = systems_rows(results, fmt, title)
    if rows:
        n = (results.get("systems") or {}).get("n")
        out += ["## Fine-tuning vs the cheap alternatives", "",
                f"The same {n} held-out prompts through every system.", "",
                md_table(header, rows, numeric=False), ""]
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
    parts: list[str] = []
    lines = recommendation_lines(results)
    if lines:
        parts += ['<h2>Recommendation</h2><div class="rec">', f"<p><b>{e(lines[0])}</b></p><ul>",
                  *[f"<li>{e(x)}</li>" for x in lines[1:]], "</ul></div>"]
    header, rows = systems_rows(results, fmt, title)
    if rows:
        n = (results.get("systems") or {}).get("n")
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
        parts += ["<h2>Fine-tuning vs the cheap alternatives</h2>",
                  f"<p>The same {e(n)} held-out prompts through every system.</p>",
                  f'<table class="systems"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>', bars_img]
        if results.get("baselines_skipped"):
            parts.append(f"<p>Baselines not run: {e(results['baselines_skipped'])}.</p>")
    items = forgetting_items(results)
    if items:
        f = results.get("forgetting") or {}
        cls = "worse" if f.get("flagged") else "better"
        parts += ["<h2>Forgetting</h2>", kv(items).replace("<table>", f'<table class="{cls}">', 1)]
        examples = f.get("examples", [])
        if examples:
            parts.append('<table class="text"><thead><tr><th>general prompt</th><th>before</th><th>after</th></tr></thead><tbody>'
                         + "".join(f"<tr><td>{e(x['prompt'])}</td><td>{e(x['before'])}</td><td>{e(x['after'])}</td></tr>"
                                   for x in examples) + "</tbody></table>")
    items = contamination_items(results)
    if items:
        parts += ["<h2>Contamination</h2>", kv(items)]
        listing = contamination_listing(results)
        if listing:
            parts.append('<table class="text"><thead><tr><th>test line</th><th>train line</th><th>similarity</th><th>test text</th>'
                         "</tr></thead><tbody>" + "".join(
                             f"<tr><td>{e(d['test_line'])}</td><td>{e(d['train_line'])}</td>"
                             f"<td>{d['similarity']:.2f}</td><td>{e(d['test_text'][:160])}</td></tr>" for d in listing)
                         + "</tbody></table>")
    return parts
