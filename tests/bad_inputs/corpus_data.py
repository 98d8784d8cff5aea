"""Small builders of bad data files for the corpus (bytes, written by the cases)."""
from __future__ import annotations

import bz2
import gzip
import json

from corpus_harness import GOOD_ROWS, jsonl

GOOD = jsonl(GOOD_ROWS)
CHAT = jsonl([{"messages": [{"role": "user", "content": f"question {i}"},
                            {"role": "assistant", "content": f"answer {i}"}]} for i in range(40)])


def with_line(line: bytes | str, at: int = 10, rows: bytes = GOOD) -> bytes:
    """``rows`` with ``line`` inserted as line ``at + 1``."""
    lines = rows.splitlines(keepends=True)
    line = line.encode() if isinstance(line, str) else line
    return b"".join(lines[:at] + [line.rstrip(b"\n") + b"\n"] + lines[at:])


def rows(make, n: int = 40) -> bytes:
    return jsonl([make(i) for i in range(n)])


def csv(header: str, n: int = 40) -> bytes:
    cols = header.split(",")
    return (header + "\n" + "".join(",".join(f"v{i}{c}" for c in cols) + "\n" for i in range(n))).encode()


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


def bz(data: bytes) -> bytes:
    return bz2.compress(data)


def nested(depth: int) -> bytes:
    return b'{"text": ' + b"[" * depth + b"]" * depth + b', "label": 0}'


def duplicates(n: int = 60) -> bytes:
    return jsonl([GOOD_ROWS[0]] * n)


def json_dumps(obj) -> bytes:
    return json.dumps(obj).encode()
