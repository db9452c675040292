"""Which storage errors are transient, and retrying idempotent storage calls through them.

A transient error says nothing about the statement: the connection broke, the server
is restarting, another writer holds the lock, the disk is (for now) full. The same
statement may succeed a moment later. Any other error (a value the column refuses, a
constraint, a statement the database will not run) fails again however often it is
retried, so retrying it would wedge whoever waits on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from ..errors import StorageError
from .dialects import imported_drivers

__all__ = ["is_transient", "retry_transient"]

log = logging.getLogger("durable_jobs")

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a storage call, may go away if the call is retried.

    Transient: lost or refused connections (SQLAlchemy's disconnect detection, a pool
    timeout), and what each backend's driver reports of server shutdowns, lock waits,
    deadlocks and full disks (``Dialect.transient``). Everything else (integrity and
    data errors, bad SQL, bugs) is permanent.
    """
    if isinstance(exc, StorageError):
        return exc.transient  # judged from the driver's error when it was raised
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.DisconnectionError | sa.exc.TimeoutError):
        return True
    if isinstance(exc, sa.exc.StatementError):
        # SQLAlchemy wraps driver errors (connecting through the engine): judge the
        # driver's error, and count a wrapped OperationalError of another kind as one.
        verdict = None if exc.orig is None else _driver_verdict(exc.orig)
        return isinstance(exc, sa.exc.OperationalError) if verdict is None else verdict
    return bool(_driver_verdict(exc))


def _driver_verdict(exc: BaseException) -> bool | None:
    for dialect in imported_drivers():
        verdict = dialect.transient(exc)
        if verdict is not None:
            return verdict
    return None


def retry_transient(op: Callable[[], T], *, within: float, what: str) -> T:
    """``op()``, run again after transient errors with backoff for up to ``within`` s.

    For idempotent calls (reads, fenced writes that replace what a lost reply may have
    committed). A permanent error, or a transient one after ``within`` seconds of
    failures, is raised.
    """
    deadline = time.monotonic() + within
    failures = 0
    while True:
        try:
            return op()
        except Exception as exc:
            left = deadline - time.monotonic()
            if not is_transient(exc) or left <= 0:
                raise
            failures += 1
            wait = min(0.05 * 2**failures, 5.0, left)
            log.warning("%s failed (%s); retrying in %.2f s", what, exc, wait)
            time.sleep(wait)
