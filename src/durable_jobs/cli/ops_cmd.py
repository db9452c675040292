"""``sdj prune`` and what the operations options of ``sdj jobs`` share: durations,
times, meta filters and the attempt history of a job."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from rich.table import Table

from ..job import utcnow
from ..storage.dead_letters import Attempt
from ..storage.retention import FINISHED, check_statuses
from . import render
from .database import DEFAULT_URL, DatabaseUrl, JsonFlag, open_storage

__all__ = [
    "attempt_dict",
    "attempts_table",
    "parse_duration",
    "parse_meta",
    "parse_time",
    "prune",
]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
FINISHED_NAMES = [status.value for status in FINISHED]


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``7d`` or ``2w`` as a timedelta."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise typer.BadParameter(f"{text!r} is not a duration such as 30m, 12h or 7d")
    number, unit = found.groups()
    return timedelta(**{_UNITS[unit]: float(number)})


def parse_time(text: str) -> datetime:
    """A duration ago (``12h``: twelve hours ago) or an ISO 8601 time (naive: UTC)."""
    if _DURATION.fullmatch(text.strip().lower()):
        return utcnow() - parse_duration(text)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a duration such as 12h or 7d nor a time such as 2026-03-28T12:00"
        ) from None


def parse_meta(entries: Sequence[str]) -> dict[str, str]:
    """``key=value`` options as a dict."""
    meta: dict[str, str] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{entry!r} is not of the form key=value")
        meta[key] = value
    return meta


def attempt_dict(attempt: Attempt) -> dict[str, Any]:
    """One failed attempt as JSON-ready data."""
    return {
        "attempt": attempt.attempt,
        "worker": attempt.worker,
        "error": attempt.error,
        "traceback": attempt.traceback,
        "started_at": None if attempt.started_at is None else attempt.started_at.isoformat(),
        "finished_at": attempt.finished_at.isoformat(),
    }


def attempts_table(attempts: Sequence[Attempt]) -> Table:
    """The failed attempts of a job, oldest first."""
    table = Table(title="failed attempts", title_justify="left")
    for name in ("#", "WORKER", "ERROR", "STARTED (UTC)", "ENDED (UTC)"):
        table.add_column(name)
    for a in attempts:
        error = (a.error or "-").splitlines()[0] if a.error else "-"
        table.add_row(
            str(a.attempt),
            a.worker or "-",
            error,
            render.timestamp(a.started_at),
            render.timestamp(a.finished_at),
        )
    return table


def _check_duration(text: str) -> str:
    parse_duration(text)
    return text


def _check_finished(values: list[str]) -> list[str]:
    try:
        check_statuses(values)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return values


def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="Delete jobs that finished longer ago than this: 30m, 12h, 7d, 2w.",
            callback=_check_duration,
            show_default=False,
        ),
    ],
    status: Annotated[
        list[str],
        typer.Option(
            help=f"A finished status to delete ({', '.join(FINISHED_NAMES)}); repeatable.",
            callback=_check_finished,
        ),
    ] = ["completed"],  # noqa: B006 (Typer reads the default; it is never mutated)
    database_url: DatabaseUrl = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """Delete old finished jobs with their checkpoints, signals and attempt history.

    Works in small batches of short transactions, so workers go on meanwhile. A finished
    child whose parent has not finished yet is kept.
    """
    age = parse_duration(older_than)
    with open_storage(database_url) as storage:
        deleted = storage.admin().prune(age, status)
    if as_json:
        render.print_json({"deleted": deleted})
    else:
        typer.echo(f"deleted {deleted} job(s) {', '.join(status)} more than {older_than} ago")
