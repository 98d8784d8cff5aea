"""Bad-input corpus, part 2: commands (unknown, bad flags, missing arguments, the wrong kind of folder).

The shared runs (``{untrained}``: data prepared, never trained; ``{finished}``: a complete run; ``{notrun}``:
a folder that is not a run) are built once per module and must stay byte-identical through every case.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from corpus_harness import check_cli

# (id, argv, words); exit 2 and one `error:` line unless the table says otherwise
COMMANDS = [
    ("unknown-command", ["trian"], ["no such command"]),
    ("unknown-subcommand", ["data", "validat"], ["no such command"]),
    ("bad-flag-run", ["run", "recipe.yaml", "--bogus"], ["--bogus"]),
    ("bad-flag-eval", ["eval", "{finished}", "--fast"], ["--fast"]),
    ("bad-flag-value-int", ["data", "validate", "good.jsonl", "--no-tokens", "--out"], ["--out"]),
    ("bad-int-advise", ["advise", "recipe.yaml", "--sample", "many"], ["--sample"]),
    ("bad-float-chat", ["chat", "{finished}", "--temperature", "hot"], ["--temperature"]),
    ("missing-arg-train", ["train"], ["missing argument"]),
    ("missing-arg-eval", ["eval"], ["missing argument"]),
    ("missing-arg-export", ["export"], ["missing argument"]),
    ("missing-arg-chat", ["chat"], ["missing argument"]),
    ("missing-arg-verify", ["verify"], ["missing argument"]),
    ("missing-arg-sweep", ["sweep"], ["missing argument"]),
    ("missing-arg-validate", ["data", "validate"], ["missing argument"]),
    ("missing-arg-prepare", ["data", "prepare"], ["missing argument"]),
    ("eval-not-a-run", ["eval", "{notrun}"], ["notrun"]),
    ("eval-missing-dir", ["eval", "nowhere-001"], ["nowhere-001"]),
    ("eval-untrained", ["eval", "{untrained}"], ["tiny-001"]),
    ("eval-a-file", ["eval", "good.jsonl"], ["good.jsonl"]),
    ("export-not-a-run", ["export", "{notrun}"], ["notrun"]),
    ("export-untrained", ["export", "{untrained}"], ["tiny-001"]),
    ("export-bad-format", ["export", "{finished}", "--format", "onnx"], ["--format"]),
    ("export-gguf-bad-quant", ["export", "{finished}", "--format", "gguf", "--quant", "q3_zz"], ["q3_zz"]),
    ("export-gguf-untrained", ["export", "{untrained}", "--format", "gguf"], ["tiny-001"]),
    ("chat-not-a-run", ["chat", "{notrun}"], ["notrun"]),
    ("chat-untrained", ["chat", "{untrained}"], ["tiny-001"]),
    ("verify-not-a-run", ["verify", "{notrun}"], ["notrun"]),
    ("verify-untrained", ["verify", "{untrained}"], ["tiny-001"]),
    ("verify-missing-dir", ["verify", "nowhere-001"], ["nowhere-001"]),
    ("train-not-a-run", ["train", "{notrun}"], ["notrun"]),
    ("train-resume-untrained", ["train", "{untrained}", "--resume"], ["tiny-001"]),
    ("resume-finished", ["run", "{finished}", "--resume"], ["finished"]),
    ("resume-never-trained", ["run", "{untrained}", "--resume"], ["tiny-001"]),
    ("resume-not-a-run", ["run", "{notrun}", "--resume"], ["notrun"]),
    ("resume-a-recipe-file", ["run", "recipe.yaml", "--resume"], ["recipe.yaml"]),
    ("resume-missing", ["run", "nowhere-001", "--resume"], ["nowhere-001"]),
    ("runs-compare-one-missing", ["runs", "compare", "{finished}", "nowhere-001"], ["nowhere-001"]),
    ("runs-compare-not-a-run", ["runs", "compare", "{finished}", "{notrun}"], ["notrun"]),
    ("runs-list-missing-root", ["runs", "list", "--root", "nowhere"], ["nowhere"]),
    ("sweep-without-space", ["sweep", "recipe.yaml"], ["sweep.space"]),
    ("sweep-bad-trials", ["sweep", "recipe.yaml", "--trials", "0"], ["trials"]),
    ("advise-bad-recipe", ["advise", "nope.yaml"], ["nope.yaml"]),
    ("models-extra-arg", ["models", "extra"], ["extra"]),
    ("version-with-junk", ["--versio"], ["--versio"]),
]


@pytest.mark.parametrize("argv, words", [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_bad_command(ws_runs, capsys, argv, words):
    check_cli(ws_runs, argv, capsys, words=tuple(words))


def test_a_handful_through_a_real_process(ws_runs):
    """The same contract from a shell: exit 2, one `error:` line on stderr, no traceback."""
    cases = [["trian"], ["run", "recipe.yaml", "train.lr=abc"], ["eval", str(ws_runs.shared["notrun"])],
             ["serve", "--jobs-db", "nosuchscheme://x", "--model", str(ws_runs.model)],
             ["worker", "--db", "not a url", "--runs", "runs/jobs"]]
    for argv in cases:
        p = subprocess.run([sys.executable, "-m", "tunesmith.cli", *argv], capture_output=True, text=True,
                           timeout=120, cwd=ws_runs.root)
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, p.stderr[-3000:])
        assert "Traceback" not in p.stderr
