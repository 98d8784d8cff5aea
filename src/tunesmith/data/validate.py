"""Validate a data file: schema errors, roles, token lengths, duplicates, PII and label balance."""
from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from typing import Any

from ..config import DataConfig
from ..fsutil import atomic_write_json
from .clean import clean_example
from .example import Example
from .formats import parse_file
from .pii import find_pii
from .prepare import REASONS, preprocess, removal_problem, removal_summary

MAX_LINES = 20      # line numbers kept per error kind / PII kind / duplicate list
MAX_MESSAGES = 3    # example messages kept per error kind
HIST_BUCKETS = 10


def validate(cfg: DataConfig, spec: str, tokenizer=None) -> dict:
    """Check a whole data file and return a JSON-serialisable report.

    ``cfg.where`` is applied (non-matching rows are counted, not checked); ``cfg.max_examples`` is
    not: every matching row is checked. Cleaning follows ``cfg.clean``; PII, token and label
    statistics are computed on the cleaned examples that are not empty after cleaning. Duplicates,
    conflicts, removals, the split sizes and label coverage are what `data prepare` would find
    (the same code), with the recipe's given validation/test files (when they are other files)
    checked against this one.
    """
    result = parse_file(cfg, spec, sample=False)
    cleaned = [_clean(ex, cfg) for ex in result.examples]
    empty_lines = [ex.line for ex in cleaned if _is_empty(ex)]
    kept = [ex for ex in cleaned if not _is_empty(ex)]
    prepared = _prepared(cfg, spec, result, cleaned)
    report: dict[str, Any] = {
        "file": spec,
        "format": result.format,
        "lines": result.lines,
        "records": result.lines - sum(e["kind"] == "parse_error" for e in result.errors),
        "filtered_out": result.filtered_out,
        "valid": len(result.examples),
        "invalid": len(result.errors),
        "errors": _error_summary(result.errors),
        "empty_after_cleaning": {"count": len(empty_lines), "lines": empty_lines[:MAX_LINES]},
        "roles": _role_stats(kept),
        "duplicates": prepared["duplicates"],
        "pii": _pii_stats(kept),
        "labels": dict(sorted(Counter(ex.label for ex in kept).items()))
        if result.format == "labelled" else None,
        "tokens": _token_stats(kept, tokenizer, cfg.max_length) if tokenizer is not None else None,
        "max_examples": cfg.max_examples,
        **{k: v for k, v in prepared.items() if k != "duplicates"},
    }
    return report


def _prepared(cfg: DataConfig, spec: str, result, cleaned: list[Example]) -> dict:
    """Run prepare's preprocessing on the cleaned file (and any given validation/test file)."""
    raw = {"train": cleaned}
    given_files = {}
    for name in ("validation", "test"):
        other = getattr(cfg, name)
        if other and other != spec:
            parsed = parse_file(cfg, other, sample=False, label_names=result.label_names)
            raw[name] = [_clean(ex, cfg) for ex in parsed.examples]
            given_files[name] = {"file": other, "valid": len(parsed.examples), "invalid": len(parsed.errors)}
    splits, manifest = preprocess(cfg, raw, result.label_names if result.format == "labelled" else None,
                                  normalized=True)
    pre = manifest["preprocessing"]
    loaded = sum(pre["loaded"].values())
    problem = removal_problem(manifest)
    dups = manifest["duplicates"].get("train") or {
        "exact": 0, "exact_pairs": [], "near": 0, "near_pairs": [], "near_threshold": cfg.clean.near_dup_threshold,
        "conflicts": 0, "conflict_pairs": [], "shared_text": {"lines": 0, "chars": 0, "examples": []}}
    return {
        "duplicates": dups,
        "removal": {"loaded": pre["loaded"], "removed": pre["removed"], "total": pre["removed_total"],
                    "share": round(pre["removed_total"] / loaded, 4) if loaded else 0.0,
                    "examples": pre["removal_examples"], "max_removed": cfg.clean.max_removed,
                    "stops": problem[1] if problem else None, "summary": removal_summary(manifest)},
        "split_counts": manifest["counts"],
        "conflicts": manifest["conflicts"],
        "given_files": given_files,
        "given_eval": manifest["given_eval"],
        "inferred_labels": manifest["inferred_labels"],
        "label_coverage": manifest["label_coverage"],
    }


def _clean(ex: Example, cfg: DataConfig) -> Example:
    if not (cfg.clean.normalize or cfg.clean.strip_html):
        return ex
    return clean_example(ex, strip_html=cfg.clean.strip_html, normalize=cfg.clean.normalize)


def _is_empty(ex: Example) -> bool:
    if ex.messages:
        return any(not m["content"].strip() for m in ex.messages)
    return not (ex.text or "").strip()


def _error_summary(errors: list[dict]) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    for err in errors:
        entry = summary.setdefault(err["kind"], {"count": 0, "lines": [], "messages": []})
        entry["count"] += 1
        if len(entry["lines"]) < MAX_LINES:
            entry["lines"].append(err["line"])
        if len(entry["messages"]) < MAX_MESSAGES:
            entry["messages"].append(f"line {err['line']}: {err['message']}")
    return dict(sorted(summary.items(), key=lambda kv: -kv[1]["count"]))


def _role_stats(examples: list[Example]) -> dict | None:
    chats = [ex for ex in examples if ex.messages]
    if not chats:
        return None
    roles = Counter(m["role"] for ex in chats for m in ex.messages)
    assistant_turns = [sum(m["role"] == "assistant" for m in ex.messages) for ex in chats]
    return {
        "examples": len(chats),
        "with_system_prompt": sum(any(m["role"] == "system" for m in ex.messages) for ex in chats),
        "multi_turn": sum(n > 1 for n in assistant_turns),
        "mean_turns": round(sum(len(ex.messages) for ex in chats) / len(chats), 2),
        "max_turns": max(len(ex.messages) for ex in chats),
        "mean_assistant_turns": round(sum(assistant_turns) / len(chats), 2),
        "untrained_assistant_turns": sum(m.get("weight", 1) == 0 for ex in chats for m in ex.messages
                                         if m["role"] == "assistant"),
        "messages_by_role": dict(sorted(roles.items())),
    }


def _pii_stats(examples: list[Example]) -> dict[str, dict]:
    """PII hits per kind with the lines they occur on; the matched text is never reported."""
    counts: Counter[str] = Counter()
    lines: dict[str, list[int]] = defaultdict(list)
    for ex in examples:
        for hit in find_pii(ex.full_text()):
            counts[hit.kind] += 1
            if len(lines[hit.kind]) < MAX_LINES and ex.line not in lines[hit.kind]:
                lines[hit.kind].append(ex.line)
    return {kind: {"count": n, "lines": lines[kind]} for kind, n in counts.most_common()}


def token_lengths(examples: list[Example], tokenizer) -> list[int]:
    """Token count of each example as training sees it (chat template for chats, text + EOS)."""
    lengths = [0] * len(examples)
    chats = [i for i, ex in enumerate(examples) if ex.messages]
    texts = [i for i, ex in enumerate(examples) if not ex.messages]
    if chats:
        rendered = tokenizer.apply_chat_template([examples[i].messages for i in chats], tokenize=False)
        for i, ids in zip(chats, tokenizer(rendered, add_special_tokens=False)["input_ids"]):
            lengths[i] = len(ids)
    if texts:
        eos = 1 if tokenizer.eos_token_id is not None else 0
        encoded = tokenizer([examples[i].text for i in texts], add_special_tokens=False)["input_ids"]
        for i, ids in zip(texts, encoded):
            lengths[i] = len(ids) + eos
    return lengths


def _percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _histogram(ordered: list[int]) -> list[dict]:
    lo, hi = ordered[0], ordered[-1]
    width = max(1, math.ceil((hi - lo + 1) / HIST_BUCKETS))
    counts = Counter((n - lo) // width for n in ordered)
    return [{"lo": lo + b * width, "hi": min(hi, lo + (b + 1) * width - 1), "count": counts.get(b, 0)}
            for b in range((hi - lo) // width + 1)]


def _token_stats(examples: list[Example], tokenizer, max_length: int) -> dict | None:
    if not examples:
        return None
    lengths = token_lengths(examples, tokenizer)
    ordered = sorted(lengths)
    over = [ex.line for ex, n in zip(examples, lengths) if n > max_length]
    return {
        "min": ordered[0], "mean": round(sum(ordered) / len(ordered), 1),
        "p50": _percentile(ordered, 50), "p90": _percentile(ordered, 90),
        "p95": _percentile(ordered, 95), "p99": _percentile(ordered, 99), "max": ordered[-1],
        "total": sum(ordered), "histogram": _histogram(ordered),
        "max_length": max_length, "truncated": len(over), "truncated_lines": over[:MAX_LINES],
    }


def save_report(report: dict, path: str | os.PathLike) -> None:
    """Write the report as JSON, atomically."""
    atomic_write_json(path, report)


def _lines(lines: list[int], total: int) -> str:
    shown = ", ".join(map(str, lines))
    return f"{shown}, …" if len(lines) >= MAX_LINES and total > len(lines) else shown


def _dup_row(count: int, pairs: list[list[int]], sign: str) -> str:
    return f"{count} (e.g. line {pairs[0][0]} {sign} line {pairs[0][1]})" if count else "0"


def render_report(report: dict):
    """A rich renderable (a group of tables) summarising ``report`` for the terminal."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    summary = Table(title=f"Data check: {report['file']}", box=box.SIMPLE_HEAD, show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    ok = report["invalid"] == 0 and report["valid"] > 0
    summary.add_row("format", str(report["format"]))
    summary.add_row("records read", str(report["lines"]))
    if report["filtered_out"]:
        summary.add_row("dropped by where", str(report["filtered_out"]))
    summary.add_row("valid", Text(str(report["valid"]), style="green" if ok else "yellow"))
    summary.add_row("invalid", Text(str(report["invalid"]), style="red" if report["invalid"] else "green"))
    empty = report["empty_after_cleaning"]
    if empty["count"]:
        summary.add_row("empty after cleaning",
                        f"{empty['count']} (lines {_lines(empty['lines'], empty['count'])})")
    dups = report["duplicates"]
    summary.add_row("exact duplicates", _dup_row(dups["exact"], dups["exact_pairs"], "="))
    summary.add_row(f"near duplicates (≥{dups['near_threshold']})",
                    _dup_row(dups["near"], dups["near_pairs"], "≈"))
    if "conflicts" in dups:
        summary.add_row("conflicting answers", Text(_dup_row(dups["conflicts"], dups["conflict_pairs"], "≠"),
                                                    style="yellow" if dups["conflicts"] else ""))
    shared = dups.get("shared_text") or {}
    if shared.get("lines"):
        summary.add_row("shared text (not compared)",
                        f"{shared['lines']} line(s), {shared['chars']} chars, e.g. “{shared['examples'][0]}”")
    if removal := report.get("removal"):
        loaded = sum(removal["loaded"].values())
        summary.add_row("data prepare removes", Text(f"{removal['total']} of {loaded} ({removal['share']:.1%})",
                                                     style="red" if removal["stops"] else "green"))
    if counts := report.get("split_counts"):
        summary.add_row("split sizes", ", ".join(f"{k} {v}" for k, v in counts.items()))
    if report["max_examples"]:
        summary.add_row("max_examples", f"{report['max_examples']} (random sample used for training)")
    parts.append(summary)

    parts.extend(_trust_parts(report))
    if report["errors"]:
        table = Table(title="Errors", box=box.SIMPLE_HEAD)
        for col in ("kind", "count", "lines", "example"):
            table.add_column(col, overflow="fold")
        for kind, e in report["errors"].items():
            table.add_row(kind, str(e["count"]), _lines(e["lines"], e["count"]), e["messages"][0])
        parts.append(table)

    if roles := report["roles"]:
        table = Table(title="Conversations", box=box.SIMPLE_HEAD, show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("with system prompt", f"{roles['with_system_prompt']} / {roles['examples']}")
        table.add_row("mean / max messages", f"{roles['mean_turns']} / {roles['max_turns']}")
        table.add_row("multi-turn (>1 assistant turn)", str(roles["multi_turn"]))
        table.add_row("untrained assistant turns (weight 0)", str(roles["untrained_assistant_turns"]))
        table.add_row("messages by role",
                      ", ".join(f"{r}={n}" for r, n in roles["messages_by_role"].items()))
        parts.append(table)

    if tokens := report["tokens"]:
        table = Table(title="Token lengths", box=box.SIMPLE_HEAD)
        for col in ("min", "mean", "p50", "p90", "p95", "p99", "max", f"> {tokens['max_length']}"):
            table.add_column(col, justify="right")
        table.add_row(*(str(tokens[k]) for k in ("min", "mean", "p50", "p90", "p95", "p99", "max")),
                      Text(str(tokens["truncated"]), style="yellow" if tokens["truncated"] else ""))
        parts.append(table)
        hist = Table(box=box.SIMPLE, show_header=False)
        hist.add_column(justify="right")
        hist.add_column(justify="right")
        hist.add_column()
        peak = max(b["count"] for b in tokens["histogram"]) or 1
        for b in tokens["histogram"]:
            hist.add_row(f"{b['lo']}–{b['hi']}", str(b["count"]), "█" * round(30 * b["count"] / peak))
        parts.append(hist)

    if report["pii"]:
        table = Table(title="PII found", box=box.SIMPLE_HEAD)
        for col in ("kind", "count", "lines"):
            table.add_column(col)
        for kind, p in report["pii"].items():
            table.add_row(kind, str(p["count"]), _lines(p["lines"], p["count"]))
        parts.append(table)

    if (cov := report.get("label_coverage")) and len(cov["distribution"]) > 1:
        parts.append(_coverage_table(cov))
    elif labels := report["labels"]:
        table = Table(title="Label balance", box=box.SIMPLE_HEAD)
        for col in ("label", "count", "share"):
            table.add_column(col, justify="right" if col != "label" else "left")
        total = sum(labels.values())
        for name, n in labels.items():
            table.add_row(name, str(n), f"{100 * n / total:.1f}%")
        parts.append(table)
    if (cov := report.get("label_coverage")) and cov.get("warning"):
        parts.append(Text("warning: " + cov["warning"], style="yellow"))
    return Group(*parts)


def _trust_parts(report: dict) -> list:
    """Removals with examples, the stop message, conflicts and given files' overlaps, for the terminal."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    removal = report.get("removal")
    if removal and removal["total"]:
        table = Table(title="Removed by `data prepare`", box=box.SIMPLE_HEAD)
        for col in ("split", "reason", "count", "examples"):
            table.add_column(col, overflow="fold")
        for split, reasons in removal["removed"].items():
            for reason, n in reasons.items():
                shown = removal["examples"].get(split, {}).get(reason, [])[:2]
                table.add_row(split, REASONS.get(reason, (reason,))[0], str(n),
                              "\n".join(_removed_pair(e, "=" if reason == "exact_duplicate" else "≈")
                                        for e in shown))
        parts.append(table)
    if removal and removal["stops"]:
        parts.append(Text("stop: " + removal["stops"], style="bold red"))
    conflicts = report.get("conflicts") or {}
    if conflicts.get("count"):
        table = Table(title=f"Conflicting answers to near-identical prompts ({conflicts['count']}, "
                            f"policy {conflicts['policy']})", box=box.SIMPLE_HEAD)
        for col in ("lines", "first", "second"):
            table.add_column(col, overflow="fold")
        for pair in conflicts["pairs"][:MAX_MESSAGES * 2]:
            table.add_row(" / ".join(map(str, pair["lines"])), *pair["texts"])
        parts.append(table)
    for split, info in (report.get("given_eval") or {}).items():
        overlap = info["train_overlap"]
        style = "yellow" if info["duplicates"] or overlap["count"] else "green"
        verdict = "kept as given" if info["kept_as_given"] else f"{info['removed']} removed"
        parts.append(Text(f"given {split} file: {info['items']} items, {info['duplicates']} duplicate(s) inside, "
                          f"{overlap['count']} overlap(s) with training ({overlap['same_answer']} with the same "
                          f"answer); {verdict}", style=style))
        for item in overlap["items"][:MAX_MESSAGES]:
            parts.append(Text(f"  {split} line {item['line']} ≈ train line {item['train_line']} "
                              f"({item['similarity']:.2f}): {item['text']}"))
    return parts


def _removed_pair(item: dict, sign: str) -> str:
    if "kept_line" in item:
        return f"line {item['line']} {sign} line {item['kept_line']}: {item['text']}  |  {item['kept_text']}"
    return f"line {item['line']}: {item['text']}"


def _coverage_table(cov: dict):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    splits = list(cov["distribution"])
    flagged = {i["label"] for i in cov["issues"]}
    table = Table(title="Labels per split", box=box.SIMPLE_HEAD)
    table.add_column("label")
    for name in splits:
        table.add_column(name, justify="right")
    labels = list(dict.fromkeys(label for d in cov["distribution"].values() for label in d))
    for label in labels:
        style = "yellow" if label in flagged else ""
        table.add_row(Text(str(label), style=style),
                      *(Text(str(cov["distribution"][s].get(label, 0)), style=style) for s in splits))
    return table
