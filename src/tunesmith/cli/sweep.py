"""`tunesmith sweep`: an Optuna search over the recipe's `sweep.space` (``tunesmith.sweep`` loads in the body)."""
from __future__ import annotations

from typing import List, Optional

import typer


def sweep_command(recipe: str = typer.Argument(..., help="Recipe YAML with a `sweep` section."),
                  overrides: Optional[List[str]] = typer.Argument(
                      None, help="Recipe overrides as dotted key=value, e.g. train.max_steps=100"),
                  trials: Optional[int] = typer.Option(None, "--trials", help="Trials to finish (default: "
                                                                                "sweep.trials)."),
                  override: Optional[List[str]] = typer.Option(None, "-o", "--override",
                                                               help="Recipe override key=value (repeatable).")):
    """Hyperparameter sweep (Optuna): every trial is a run; continues an interrupted sweep."""
    from ..sweep import print_summary, sweep
    summary = sweep(recipe, [*(overrides or []), *(override or [])], trials=trials)
    print_summary(summary)
