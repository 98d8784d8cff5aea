"""Durations as recipes write them ("90s", "10m", "1h30m", "1.5h" or seconds): parsing and the recipe field type."""
from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

MAX_BUDGET_S = 366 * 24 * 3600.0
DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(value: Any) -> float:
    """Seconds in ``value``: a number of seconds, or a string like "90s", "10m", "1h30m", "1.5h"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            m = DURATION_RE.match(text)
            if not text or m is None or not any(m.groups()):
                raise ValueError(f"time_budget {value!r} is not a duration; expected e.g. 90s, 10m, 1h30m "
                                 f"or a number of seconds") from None
            h, mins, s = (float(g) if g else 0.0 for g in m.groups())
            seconds = h * 3600 + mins * 60 + s
    else:
        raise ValueError(f"time_budget must be a duration like 90s, 10m, 1h30m or a number of seconds, "
                         f"not {type(value).__name__} {str(value)[:80]!r}")
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_BUDGET_S:
        raise ValueError(f"time_budget must be above 0 and at most 366 days (got {value!r})")
    return seconds


def check_duration(value: Any) -> Any:
    """``value`` unchanged (as the user wrote it) after checking that it parses."""
    if value is not None:
        parse_duration(value)
    return value


Duration = Annotated[Any, BeforeValidator(check_duration)]


__all__ = ["parse_duration", "check_duration", "Duration", "MAX_BUDGET_S"]
