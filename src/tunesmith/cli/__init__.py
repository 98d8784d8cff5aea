"""`tunesmith` command line, one module per command group, imported only when its command runs.

- ``main``: the entry point (``main(argv) -> exit code``), the root group with lazy dispatch, ``--version``
  and the error contract (one ``error: ...`` line and exit 2 for usage errors and bad input, 130 on Ctrl-C).
- ``run``: run, data validate|prepare, train, eval, export, advise, chat.
- ``runs``: runs list|compare.  ``sweep``: sweep.  ``verify``: verify.  ``models``: models.
- ``serve``: serve (flags generated from ``ServeSettings``) and worker.

No library module imports typer; the command modules import the library inside their command bodies.
"""
from .main import app, main

__all__ = ["app", "main"]
