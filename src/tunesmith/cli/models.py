"""`tunesmith models`: the offline model catalogue."""
from __future__ import annotations

from .common import console


def list_models():
    """List the offline model catalogue."""
    from rich.table import Table

    from ..models import catalogue, home
    t = Table(title=f"tunesmith models (cache: {home()})")
    for col in ("name", "parameters", "architecture", "license", "package", "installed", "cached"):
        t.add_column(col, no_wrap=True)
    for row in catalogue():
        t.add_row(row["name"], f"{row['parameters'] / 1e6:.1f}M", row["architecture"], row["license"],
                  row["package"], "yes" if row["installed"] else "no", "yes" if row["cached"] else "no")
    c = console()
    c.print(t)
    c.print("Also accepted: a local Hugging Face model folder, a .gguf file, or a hub id (needs network).")
