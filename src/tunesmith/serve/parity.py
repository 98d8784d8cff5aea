"""Live-server parity: verify a run against tunesmith's own server started on loopback (the end-of-run check)."""
from __future__ import annotations

from pathlib import Path

from ..rundir import Run, as_run


def verify_live(run_dir: "str | Path | Run", *, prompts: int = 8, max_new_tokens: int | None = None,
                print_table: bool = True) -> dict:
    """``verify`` with the live-server check against tunesmith's own server, started on loopback for
    the run (base model + this run) and stopped afterwards."""
    from ..verify import verify
    from . import ServeSettings, create_app
    from .background import BackgroundServer
    run = as_run(run_dir)
    settings = ServeSettings(model=run.recipe.model.name, runs=[run.path], api_keys=[])
    with BackgroundServer(create_app(settings)) as srv:
        return verify(run.path, server_url=srv.url, prompts=prompts, max_new_tokens=max_new_tokens,
                      print_table=print_table)


def verify_after_export(run_dir: "str | Path | Run", prompts: int = 8, live: bool = True) -> dict | None:
    """The end-of-run check (``export.verify``): verify when there is something to compare, else None.

    Nothing to compare: a run whose objective does not generate text, a run whose test split has no
    chat prompts (plain-text data), or no merged model and no GGUF file in ``export/``. The result is
    recorded as the run's ``verify`` stage.
    """
    from .. import objectives
    from ..data.prepare import load_splits
    from ..verify import verify
    run = as_run(run_dir)
    if not objectives.OBJECTIVES[run.recipe.objective.name].generates_text or not (
            run.has_merged() or run.gguf_files()):
        return None
    splits, _ = load_splits(run.data_dir)
    if not any(ex.messages for ex in splits["test"]):
        return None
    res = verify_live(run, prompts=prompts) if live else verify(run.path, prompts=prompts)
    run.mark("verify", ok=res["ok"], compared=res["compared"])
    return res


__all__ = ["verify_live", "verify_after_export"]
