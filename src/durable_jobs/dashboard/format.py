"""How values look on the pages: times, durations and JSON. Registered as Jinja filters."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta

from ..job import utcnow

__all__ = ["FILTERS", "ago", "duration", "precise", "pretty_json", "short", "timestamp"]

# Enough to read any sane argument or result; a page never carries megabytes of JSON.
MAX_JSON_CHARS = 20_000


def timestamp(value: datetime | None) -> str:
    """``2030-01-31 12:00:05`` (UTC), or a dash."""
    return "—" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def precise(value: datetime | None) -> str:
    """``2030-01-31 12:00:05.123`` (UTC, to the millisecond), or a dash."""
    return "—" if value is None else f"{value:%Y-%m-%d %H:%M:%S}.{value.microsecond // 1000:03d}"


def duration(value: timedelta | float | None) -> str:
    """A duration for people: ``850 ms``, ``12.3 s``, ``4 min 05 s``, ``3 h 02 min``."""
    if value is None:
        return "—"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    if seconds < 1:
        text = f"{seconds * 1000:.0f} ms"
    elif seconds < 60:
        text = f"{seconds:.1f} s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    elif seconds < 86400:
        text = f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    else:
        text = f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"
    return sign + text


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago (or, for a future time, in how long) ``value`` is."""
    if value is None:
        return "—"
    delta = (now or utcnow()) - value
    if delta < timedelta(0):
        return f"in {duration(-delta)}"
    return f"{duration(delta)} ago"


def pretty_json(value: bytes | str | None) -> str:
    """Stored JSON indented for reading (text as stored if it is not JSON), capped in size."""
    if value is None:
        return "—"
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    with contextlib.suppress(ValueError):  # not JSON: shown as stored
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    if len(text) > MAX_JSON_CHARS:
        text = f"{text[:MAX_JSON_CHARS]}\n… ({len(text) - MAX_JSON_CHARS} more characters)"
    return text


def short(value: bytes | str | None, limit: int = 80) -> str:
    """One line of at most ``limit`` characters, for table cells."""
    if value is None:
        return ""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


FILTERS = {
    "ago": ago,
    "duration": duration,
    "precise": precise,
    "pretty_json": pretty_json,
    "short": short,
    "timestamp": timestamp,
}
