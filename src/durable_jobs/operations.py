"""What ``Queue``'s operations methods check before they ask the storage: search
filters, cursors, retention policies and bulk-retry bounds. Bad input raises
``ValueError`` (or ``TypeError``) with one clear sentence, before anything is written."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from .job import JobStatus, utcnow
from .storage.admin import Cursor
from .storage.retention import check_older_than, check_statuses

__all__ = [
    "MAX_LIMIT",
    "check_limit",
    "check_retention",
    "cursor",
    "meta_filter",
    "since_time",
    "status",
]

#: The most jobs one page of ``list_jobs`` holds.
MAX_LIMIT = 1000


def status(value: JobStatus | str | None) -> JobStatus | None:
    """``value`` as a ``JobStatus`` (None for any status)."""
    if value is None or isinstance(value, JobStatus):
        return value
    try:
        return JobStatus(value)
    except ValueError:
        names = ", ".join(s.value for s in JobStatus)
        raise ValueError(f"unknown status {value!r}: choose among {names}") from None


def check_limit(limit: int) -> int:
    """``limit`` if it is a whole number from 1 to ``MAX_LIMIT``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


def cursor(value: Cursor | str | None) -> Cursor | None:
    """A page cursor, from a ``Cursor`` or its ``token()``."""
    if value is None or isinstance(value, Cursor):
        return value
    if not isinstance(value, str):
        raise TypeError(f"after must be a cursor of a page of list_jobs, got {value!r}")
    try:
        return Cursor.parse(value)
    except ValueError:
        raise ValueError(f"not a cursor of a page of list_jobs: {value!r}") from None


def since_time(since: datetime | timedelta | None, now: datetime | None = None) -> datetime | None:
    """``since`` as a time: a timedelta means that long before ``now``."""
    if since is None or isinstance(since, datetime):
        return since
    if isinstance(since, timedelta):
        if since < timedelta(0):
            raise ValueError(f"since must not be a negative timedelta, got {since}")
        return (now or utcnow()) - since
    raise TypeError(f"since must be a datetime or a timedelta, got {since!r}")


def check_retention(
    retention: Mapping[str, timedelta] | None,
) -> dict[JobStatus, timedelta] | None:
    """A worker's retention policy: how long finished jobs of each status are kept."""
    if retention is None:
        return None
    if not isinstance(retention, Mapping):
        raise TypeError(
            "retention must map finished statuses to timedeltas, such as"
            f" {{'completed': timedelta(days=7)}}, got {retention!r}"
        )
    policy: dict[JobStatus, timedelta] = {}
    for name, keep in retention.items():
        [each] = check_statuses([name])
        try:
            policy[each] = check_older_than(keep)
        except ValueError:
            raise ValueError(
                f"retention[{name!r}] must be a timedelta of zero or more, got {keep!r}"
            ) from None
    return policy or None


def meta_filter(meta: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``meta`` if it is a mapping (its values are checked by the search)."""
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict of key to value, got {meta!r}")
    return meta
