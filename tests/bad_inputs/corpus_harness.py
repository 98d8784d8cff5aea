"""The bad-input corpus harness: a workspace per case, the CLI run in-process, and the checks every case shares.

Set CORPUS_SHOW=1 (with `pytest -s`) to print each case's error line.

A CLI case is run by :func:`check_cli`: exit code, exactly one ``error:`` line on stderr (for exit 2), no
traceback, no orphan run folder (a new ``runs/NAME-NNN`` must be marked ``failed`` in ``run.json``), and
every input file (everything in the workspace outside the run root, plus the shared runs a case points at)
byte-identical afterwards. Each result is also tallied in :data:`TALLY` for the corpus figures.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from tunesmith.config import merge_settings

TALLY: Counter = Counter()


def digest_tree(path: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """relative path -> sha256 of every file below ``path`` (folders in ``skip`` left out)."""
    out = {}
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if Path(root, d) not in skip)
        for f in files:
            p = Path(root, f)
            if p.is_file():
                out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def sentiment_rows(n: int) -> list[dict]:
    """Labelled rows, all distinct (the suite's tests/conftest.py has the same kind; importing it here would
    clash with this folder's conftest module name)."""
    pos, neg = ["wonderful", "great", "enjoy", "quick"], ["cold", "bland", "lazy", "not"]
    filler = ["the", "movie", "was", "food", "actors", "review", "dog", "fox"]
    return [{"text": f"{filler[i % 8]} {filler[(i * 3 + 1) % 8]} {(pos if i % 2 else neg)[i % 4]} "
                     f"{(pos if i % 2 else neg)[(i // 4) % 4]} {i}", "label": i % 2} for i in range(n)]


GOOD_ROWS = sentiment_rows(80)


def base_recipe(ws: "Workspace") -> dict:
    return {
        "name": "tiny", "task": "classification", "objective": {"name": "sft"}, "output_dir": "runs",
        "model": {"name": str(ws.model)},
        "data": {"train": "good.jsonl", "format": "labelled", "labels": {"0": "negative", "1": "positive"},
                 "instruction": "Is this positive or negative?", "max_length": 64, "clean": {"near_dedup": False}},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "eval_every": 50, "save_every": 50},
        "eval": {"max_new_tokens": 2, "batch_size": 8, "embedding_model": "tfidf"},
        "forgetting": {"max_documents": 4, "max_prompts": 2},
        "tracking": {"mlflow": False},
    }


@dataclass
class Workspace:
    """A case's folder (the cwd while it runs): ``good.jsonl``, ``recipe.yaml`` and the run root ``runs/``."""
    root: Path
    model: Path
    shared: dict = field(default_factory=dict)     # name -> path of module-scoped runs (untrained, finished...)

    def write(self, name: str, content: bytes | str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def recipe(self, name: str = "recipe.yaml", replace: dict | None = None, **sections) -> Path:
        """A recipe: the working base merged with ``sections``; ``replace`` swaps whole sections."""
        recipe = merge_settings(base_recipe(self), sections)
        recipe.update(replace or {})
        return self.write(name, yaml.safe_dump(recipe))

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def fmt(self, arg: str) -> str:
        for key, value in {"root": self.root, "model": self.model, **self.shared}.items():
            arg = arg.replace("{" + key + "}", str(value))
        return arg


def new_workspace(root: Path, model: Path, shared: dict | None = None) -> Workspace:
    ws = Workspace(root, model, dict(shared or {}))
    ws.write("good.jsonl", jsonl(GOOD_ROWS))
    ws.recipe()
    return ws


@dataclass
class Result:
    code: int
    err_lines: list[str]
    out: str


def run_cli(argv: list[str], capsys) -> Result:
    from tunesmith.cli import main
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:        # main() must never exit by itself; counted as a failure below
        code = f"SystemExit({e.code})"
    except BaseException as e:     # noqa: BLE001 - an escaped exception is exactly what the corpus looks for
        import traceback
        captured = capsys.readouterr()
        TALLY["tracebacks"] += 1
        raise AssertionError(f"{argv}: exception escaped main(): {e!r}\n{traceback.format_exc()}\n{captured.err}")
    captured = capsys.readouterr()
    return Result(code, [x for x in captured.err.splitlines() if x.strip()], captured.out)


def new_run_dirs(before: set[Path], roots: list[Path]) -> list[Path]:
    found = set()
    for r in roots:
        if r.is_dir():
            found |= {p for p in r.iterdir() if p.is_dir()}
    return sorted(found - before)


def orphans(dirs: list[Path]) -> list[Path]:
    """New run folders not marked failed (a failed command may leave a folder only with a failure mark)."""
    from tunesmith.rundir import Layout
    return [d for d in dirs if "failed" not in Layout(d).stages()]


def check_cli(ws: Workspace, argv: list[str], capsys, *, code: int = 2, words: tuple = (),
              allow_failed_folder: bool = False) -> Result:
    """Run ``argv`` (formatted with the workspace) in-process and assert the corpus contract."""
    argv = [ws.fmt(a) for a in argv]
    roots = [ws.runs, *(Path(p).parent for p in ws.shared.values())]
    before_dirs = set(new_run_dirs(set(), roots))
    inputs = digest_tree(ws.root, skip=(ws.runs, ws.root / "tunesmith-home"))
    shared = {k: digest_tree(Path(v)) for k, v in ws.shared.items()}
    TALLY["cases"] += 1
    res = run_cli(argv, capsys)
    text = "\n".join(res.err_lines)
    if "Traceback" in text or "Traceback" in res.out:
        TALLY["tracebacks"] += 1
    created = new_run_dirs(before_dirs, roots)
    orphaned = orphans(created)
    TALLY["orphans"] += len(orphaned)
    changed = [k for k, v in digest_tree(ws.root, skip=(ws.runs, ws.root / "tunesmith-home")).items()
               if k in inputs and inputs[k] != v]
    changed += [k for k, v in shared.items() if digest_tree(Path(ws.shared[k])) != v]
    TALLY["inputs_changed"] += len(changed)
    if os.environ.get("CORPUS_SHOW"):
        print(f"\n[corpus] {argv[:3]} -> {res.code}: {text}", file=sys.__stderr__)
    assert "Traceback" not in text and "Traceback" not in res.out, text or res.out
    assert res.code == code, f"{argv}: exit {res.code}, expected {code}; stderr: {text}\nstdout: {res.out[-2000:]}"
    if code == 2:
        assert len(res.err_lines) == 1 and res.err_lines[0].startswith("error: "), text
        TALLY["clear_errors"] += 1
    for w in words:
        assert w.lower() in text.lower(), f"{w!r} not in: {text}"
    assert not orphaned, f"orphan run folders: {orphaned}"
    if created and not allow_failed_folder:
        raise AssertionError(f"validate-able input should fail before a run folder is made: {created}")
    assert not changed, f"inputs changed: {changed}"
    return res


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable          # (ws, capsys) -> None


def write_tally(path: Path) -> None:
    path.write_text(json.dumps(dict(TALLY), indent=1))
