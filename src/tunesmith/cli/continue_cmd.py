"""`tunesmith continue NAME@ALIAS NEW_DATA [k=v ...]`: train the next version of a named model (torch loads in the body)."""
from __future__ import annotations

from typing import List, Optional

import typer

from .common import console, overrides_argument


def continue_command(ref: str = typer.Argument(..., help="The version to continue: NAME@champion, NAME@v2 or NAME."),
                     data: str = typer.Argument(..., help="New training data (JSONL/CSV/Parquet; format auto-detected)."),
                     overrides: Optional[List[str]] = overrides_argument(),
                     root: Optional[str] = typer.Option(None, "--root", help="Runs folder holding the versions "
                                                                               "(default: runs)."),
                     tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri",
                                                                help="MLflow registry URI (default: beside the runs).")):
    """Train the next version of a named model on new data (replay, stack or regularize), evaluated on every ancestor's tests."""
    from ..lifecycle.continuation import continue_version
    from ..rundir import read_json
    from .run import closing_lines

    def live_parity(run) -> None:
        if run.recipe.export.verify:
            from ..serve.parity import verify_after_export
            verify_after_export(run, prompts=max(run.recipe.export.parity_prompts, 1))
    version = continue_version(ref, data, overrides, tracking_uri=tracking_uri, root=root, after_export=live_parity)
    closing_lines(version.run_dir)
    backward = read_json(version.run_dir / "eval" / "backward.json") or {}
    c = console()
    for suite, s in (backward.get("suites") or {}).items():
        before, after = s.get("ancestor_score"), s.get("child_score")
        if before is not None and after is not None:
            c.print(f"  {suite:<16} {s['metric']} {before:.4f} ({s['ancestor']})  ->  {after:.4f}", markup=False,
                    highlight=False)
    c.print(f"Version: {version.ref} (parent {version.parent})", markup=False, highlight=False)
