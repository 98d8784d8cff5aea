"""Rich progress bar for training: step, loss, tokens/s and ETA, with notes printed above it."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True, soft_wrap=True)   # long paths stay on one line (copy-pasteable)


class TrainProgress:
    def __init__(self, total: int, start: int = 0, enabled: bool = True, description: str = "train"):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, disable=not enabled, transient=False)
        self.task = self.progress.add_task(description, total=total, completed=start, loss="-", tps="-")

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def update(self, step: int, loss: float, tps: float) -> None:
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tps:.0f}")

    def note(self, text: str) -> None:
        if self.enabled:
            self.progress.console.log(text)
