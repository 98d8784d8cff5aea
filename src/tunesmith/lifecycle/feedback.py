"""Feedback from production: the request log's on-disk format and ``tunesmith harvest``.

The server (``tunesmith serve --log-dir DIR``, :mod:`tunesmith.serve.requestlog`) appends PII-anonymised chat
completions to ``DIR/requests.jsonl`` and feedback on them to ``DIR/feedback.jsonl`` (each rotated to
``requests.1.jsonl``, ``requests.2.jsonl``, ... oldest last). :func:`harvest` reads both for one named model
(any alias or version of it) and turns

- corrections into SFT examples in OpenAI chat format: the logged prompt messages + the corrected answer (the
  latest correction of a response wins);
- preferred/rejected pairs into preference data in OpenAI's DPO format (``input.messages``,
  ``preferred_output``, ``non_preferred_output``).

Every example is checked by the project's format parser, deduplicated against the others and against the
training (and held-out) data of every version of the model, and written atomically beside a summary
(``*.harvest.json``: counts, reasons, and the response and feedback id of every line). Existing files are never
overwritten. The SFT file is the DATA of ``tunesmith continue NAME@champion FILE``.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from ..errors import TunesmithError
from ..fsutil import atomic_write_json, atomic_write_text
from ..rundir import Layout, read_jsonl

REQUESTS = "requests"
FEEDBACK = "feedback"
SPLITS = ("train", "validation", "test")
SHOWN = 5                  # duplicate examples printed


# ------------------------------------------------------------------------------------ the log format

def rotated_path(directory: Path, stem: str, number: int) -> Path:
    """``requests.jsonl`` (number 0, the file being written) or ``requests.N.jsonl`` (rotated N times)."""
    return Path(directory) / (f"{stem}.jsonl" if number == 0 else f"{stem}.{number}.jsonl")


def log_files(directory: Path | str, stem: str) -> list[tuple[int, Path]]:
    """The existing files of one log as ``(rotation number, path)``, oldest first."""
    directory = Path(directory)
    found = []
    for p in directory.glob(f"{stem}*.jsonl"):
        m = re.fullmatch(re.escape(stem) + r"(?:\.(\d+))?\.jsonl", p.name)
        if m:
            found.append((int(m.group(1) or 0), p))
    return sorted(found, key=lambda t: -t[0])


def read_log(directory: Path | str, stem: str) -> tuple[list[dict], int]:
    """Every record of one log, oldest first, and the count of torn lines skipped."""
    out, skipped = [], 0
    for _, path in log_files(directory, stem):
        recs = read_jsonl(path)
        out += recs
        skipped += recs.skipped
    return out, skipped


def parse_since(text: str | None) -> datetime | None:
    """An ISO date or date-time (UTC when no zone is given); one clear error otherwise."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TunesmithError(f"invalid date {text!r}; expected an ISO date like 2026-11-01 or "
                             "2026-11-01T12:00:00", field="since") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _after(record: dict, since: datetime | None) -> bool:
    if since is None:
        return True
    try:
        when = datetime.fromisoformat(str(record.get("time")))
    except ValueError:
        return False
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)) >= since


def name_of(record: dict) -> str | None:
    """The model name a logged record belongs to: its resolved version's name, else ``NAME`` of ``NAME@...``."""
    if isinstance(record.get("name"), str):
        return record["name"]
    model = str(record.get("model") or "")
    return model.partition("@")[0] if "@" in model else None


def check_log_dir(log_dir: Path | str) -> Path:
    log_dir = Path(log_dir).expanduser()
    if not log_dir.is_dir():
        raise TunesmithError("request log folder not found; expected the --log-dir of `tunesmith serve`",
                             file=str(log_dir), field="log-dir")
    if not log_files(log_dir, REQUESTS):
        raise TunesmithError("no request log (requests.jsonl) in this folder; expected the --log-dir of "
                             "`tunesmith serve --log-dir DIR`", file=str(log_dir), field="log-dir")
    return log_dir


def logged_requests(log_dir: Path | str, name: str, since: datetime | None = None) -> tuple[list[dict], int]:
    """The logged chat completions of model ``name`` (any alias or version), oldest first, and torn lines."""
    records, skipped = read_log(check_log_dir(log_dir), REQUESTS)
    return [r for r in records if name_of(r) == name and _after(r, since)], skipped


def model_versions(ref_or_name: str, *, root=None, tracking_uri=None):
    """``(name, versions)`` of a model named ``NAME`` or ``NAME@ALIAS``; one clear error for an unknown name."""
    from .versions import describe_known, parse_ref, versions
    name, _ = parse_ref(ref_or_name)
    found = versions(name, tracking_uri=tracking_uri, root=root)
    if not found:
        raise TunesmithError(f"unknown model '{name}': {describe_known(name, found)} (register one with "
                             "`tunesmith register RUN --as NAME`)", field="name")
    return name, found


# ------------------------------------------------------------------------------------ keys

def example_key(ex) -> str:
    """What makes two examples the same (the continuation's replay key, plus the rejected reply of a pair)."""
    from ..data.dedup import normalize_key
    key = normalize_key(ex.prompt_key()) + "\x00" + normalize_key(ex.reference or ex.text or "")
    return key + ("\x00" + normalize_key(ex.rejected) if ex.rejected is not None else "")


def known_examples(found) -> dict[str, str]:
    """Key -> where, for every example of every version's training and held-out splits."""
    from ..data.example import Example
    known: dict[str, str] = {}
    for v in found:
        for split in SPLITS:
            path = Layout(v.run_dir).data_dir / f"{split}.jsonl"
            for i, rec in enumerate(read_jsonl(path), 1):
                try:
                    ex = Example(**rec)
                except TypeError:
                    continue
                known.setdefault(example_key(ex), f"{v.ref} {split} data ({path}, record {i})")
    return known


# ------------------------------------------------------------------------------------ harvest

def _candidates(requests: dict[str, dict], feedback: list[dict], skipped: Counter) -> list[dict]:
    """(kind, record, provenance) for every correction (latest per response) and preference pair."""
    latest: dict[str, dict] = {}
    out = []
    for fb in feedback:
        req = requests[fb["response_id"]]
        prompt = [{"role": m.get("role"), "content": m.get("content")} for m in req.get("messages") or []]
        where = {"feedback_id": fb.get("id"), "response_id": fb["response_id"], "model": req.get("model"),
                 "version": req.get("version"), "time": fb.get("time")}
        if fb.get("correction") is not None:
            if fb["response_id"] in latest:
                skipped["correction superseded by a later one for the same response"] += 1
            latest[fb["response_id"]] = {"kind": "sft", "where": where, "record": {
                "messages": prompt + [{"role": "assistant", "content": fb["correction"]}]}}
        if fb.get("preferred") is not None and fb.get("rejected") is not None:
            out.append({"kind": "preference", "where": where, "record": {
                "input": {"messages": prompt},
                "preferred_output": [{"role": "assistant", "content": fb["preferred"]}],
                "non_preferred_output": [{"role": "assistant", "content": fb["rejected"]}]}})
        if fb.get("correction") is None and fb.get("preferred") is None:
            skipped["rating only (nothing to train on)"] += 1
    return list(latest.values()) + out


def _snippet(record: dict) -> str:
    msgs = record.get("messages") or (record.get("input") or {}).get("messages") or []
    users = [m.get("content") or "" for m in msgs if m.get("role") == "user"]
    text = " ".join((users[-1] if users else "").split())
    return text[:60] + ("..." if len(text) > 60 else "")


def default_out(name: str) -> Path:
    return Path(f"{name}-harvest.jsonl")


def output_paths(out: Path | str) -> dict[str, Path]:
    out = Path(out).expanduser()
    stem = out.name[:-len(".jsonl")] if out.name.endswith(".jsonl") else out.stem
    return {"sft": out, "preference": out.with_name(f"{stem}.preference.jsonl"),
            "summary": out.with_name(f"{stem}.harvest.json")}


def harvest(name: str, log_dir: Path | str, *, out: Path | str | None = None, since: str | None = None,
            root=None, tracking_uri=None) -> dict:
    """Turn the logged feedback of model ``name`` into SFT and preference files (see the module docstring).

    Returns the report: counts of logged requests and feedback, ratings, harvested examples, duplicates
    dropped (with examples), examples skipped per reason, and the files written."""
    from ..config import DataConfig
    from ..data.formats import FormatError, to_example
    name, found = model_versions(name, root=root, tracking_uri=tracking_uri)
    when = parse_since(since)
    paths = output_paths(out or default_out(name))
    existing = [p for p in paths.values() if p.exists()]
    if existing:
        raise TunesmithError("output file exists; harvest never overwrites: choose another --out",
                             file=str(existing[0]), field="out")
    log_dir = check_log_dir(log_dir)
    all_requests, torn = read_log(log_dir, REQUESTS)
    requests = {r["id"]: r for r in all_requests if isinstance(r.get("id"), str) and name_of(r) == name}
    feedback, torn_fb = read_log(log_dir, FEEDBACK)
    feedback = [f for f in feedback if isinstance(f.get("response_id"), str)
                and (f["response_id"] in requests or name_of(f) == name)]
    skipped: Counter = Counter()
    usable = []
    for fb in feedback:
        req = requests.get(fb["response_id"])
        if req is None:
            skipped["its request is no longer in the log (rotated out)"] += 1
        elif not _after(req, when):
            skipped["request before --since"] += 1
        else:
            usable.append(fb)
    ratings = Counter(f.get("rating") for f in usable if f.get("rating"))
    cfg = DataConfig(train=str(paths["sft"]))
    known = known_examples(found)
    seen: dict[str, str] = {}
    kept: dict[str, list] = {"sft": [], "preference": []}
    duplicates: list[dict] = []
    for cand in _candidates(requests, usable, skipped):
        kind, record, where = cand["kind"], cand["record"], cand["where"]
        try:
            ex = to_example(record, "chat" if kind == "sft" else "preference", cfg, str(paths[kind]),
                            len(kept[kind]) + 1)
        except FormatError as e:
            skipped[f"invalid {kind} example: {e}"] += 1
            continue
        key = example_key(ex)
        dup_of = known.get(key) or seen.get(key)
        if dup_of:
            duplicates.append({"kind": kind, "feedback_id": where["feedback_id"], "prompt": _snippet(record),
                               "duplicate_of": dup_of})
            continue
        seen[key] = f"feedback {where['feedback_id']}"
        kept[kind].append((record, where))
    written = {}
    for kind in ("sft", "preference"):
        if kept[kind]:
            atomic_write_text(paths[kind], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r, _ in kept[kind]))
            written[kind] = str(paths[kind])
    report = {
        "name": name, "log_dir": str(log_dir), "since": since, "requests": len(requests),
        "feedback": len(feedback), "ratings": {"up": ratings.get("up", 0), "down": ratings.get("down", 0)},
        "harvested": {k: len(v) for k, v in kept.items()},
        "duplicates": {"count": len(duplicates), "examples": duplicates[:SHOWN],
                       "against_versions": [v.ref for v in found]},
        "skipped": dict(skipped), "torn_lines": torn + torn_fb, "files": written,
        "lines": {k: [w for _, w in v] for k, v in kept.items()},
    }
    if written:
        atomic_write_json(paths["summary"], report)
        report["files"]["summary"] = str(paths["summary"])
    return report


__all__ = ["harvest", "logged_requests", "log_files", "read_log", "rotated_path", "parse_since", "name_of",
           "model_versions", "example_key", "REQUESTS", "FEEDBACK"]
