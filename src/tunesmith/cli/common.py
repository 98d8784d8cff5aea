"""Helpers shared by the command modules (light: typer only; rich is imported when a command prints)."""
from __future__ import annotations

import sys

import typer

OVERRIDES_HELP = "Recipe overrides as dotted key=value, e.g. train.lr=1e-4"


def overrides_argument():
    """The trailing ``key=value ...`` recipe overrides argument."""
    return typer.Argument(None, help=OVERRIDES_HELP)


def console():
    """A rich console: soft wrap keeps long paths on one line (copy-pasteable); pipes get 160 columns, not 80."""
    from rich.console import Console
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
