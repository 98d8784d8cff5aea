"""Fixtures of the bad-input corpus: a fresh workspace per case, shared runs built once per module."""
from __future__ import annotations

import io
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from corpus_harness import TALLY, new_workspace  # noqa: E402


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory, tiny_model_dir):
    """Runs the command cases point at (read only; each case checks they stay byte-identical):
    ``untrained`` (data prepared, never trained), ``finished`` (a complete 2-step run), ``notrun``
    (a folder with files that is not a run)."""
    from tunesmith.cli import main
    root = tmp_path_factory.mktemp("corpus-runs")
    ws = new_workspace(root, tiny_model_dir)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out):
        mp.setenv("TUNESMITH_HOME", str(root / "tunesmith-home"))
        mp.chdir(root)
        assert main(["data", "prepare", "recipe.yaml"]) == 0, out.getvalue()
        assert main(["run", "recipe.yaml", "export.verify=false"]) == 0, out.getvalue()
    untrained, finished = root / "runs" / "tiny-001", root / "runs" / "tiny-002"
    notrun = root / "runs" / "notrun"
    notrun.mkdir()
    (notrun / "notes.txt").write_text("not a run\n")
    return {"untrained": untrained, "finished": finished, "notrun": notrun}


@pytest.fixture
def ws(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    return new_workspace(tmp_path, tiny_model_dir)


@pytest.fixture
def ws_runs(ws, shared_runs):
    ws.shared.update(shared_runs)
    return ws


def pytest_terminal_summary(terminalreporter):
    if TALLY["cases"]:
        terminalreporter.write_line(
            "bad-input corpus: {cases} CLI cases, {clear_errors} clear one-line errors, {tracebacks} tracebacks, "
            "{orphans} orphan run folders, {inputs_changed} inputs changed; {server} server cases, "
            "{server_5xx} 5xx".format(**{k: TALLY[k] for k in ("cases", "clear_errors", "tracebacks", "orphans",
                                                                "inputs_changed", "server", "server_5xx")}))
