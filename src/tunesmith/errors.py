"""User-facing errors: one clear line, exit code 2, no traceback."""
from __future__ import annotations


class TunesmithError(Exception):
    """An error caused by the user's input (file, recipe, model name, directory).

    The CLI prints ``str(err)`` as one line and exits with code 2. Messages name the
    file, line and field when known, and say what was expected.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = []
        if file:
            where.append(f"{file}:{line}" if line else str(file))
        if field:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.file, self.line, self.field = file, line, field
