"""Which storage errors are transient, and retrying idempotent storage calls through them.

A transient error says nothing about the statement: the connection broke, the server
is restarting, another writer holds the lock, the disk is (for now) full. The same
statement may succeed a moment later. Any other error (a value the column refuses, a
constraint, a statement the database will not run) fails again however often it is
retried, so retrying it would wedge whoever waits on it.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

__all__ = ["is_transient", "retry_transient"]

log = logging.getLogger("durable_jobs")

T = TypeVar("T")

# SQLite result codes (the low byte of an extended code) that a later attempt may not
# meet: busy and locked (another writer), an I/O error, a full disk, a file that could
# not be opened, a WAL protocol race.
_SQLITE_TRANSIENT = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
_SQLITE_TRANSIENT_TEXT = ("locked", "busy", "disk i/o", "disk is full", "unable to open")
# PostgreSQL SQLSTATE classes psycopg reports as OperationalError that no retry cures:
# 54, program limit exceeded (a row or value too big, too many columns).
_POSTGRES_PERMANENT_CLASSES = ("54",)
# MySQL/MariaDB error numbers PyMySQL reports that a later attempt may not meet: lost,
# refused or gone connections (2002, 2003, 2006, 2013, 2055), too many connections
# (1040), a server shutting down (1053, 1077, 1927: a killed connection), lock wait
# timeouts (1205) and deadlocks (1213), a full disk (1021, 1114: table full).
_MYSQL_TRANSIENT = frozenset(
    {1021, 1040, 1053, 1077, 1114, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055}
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a storage call, may go away if the call is retried.

    Transient: lost or refused connections (SQLAlchemy's disconnect detection, a pool
    timeout), psycopg's ``OperationalError`` (server shutdown, connection failures,
    deadlocks and serialisation failures, lock timeouts, a full disk; not a program
    limit such as a value too big), PyMySQL's lost connections, lock wait timeouts and
    deadlocks, and SQLite's busy, locked, I/O and full-disk errors.
    Everything else (integrity and data errors, bad SQL, bugs) is permanent.
    """
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.DisconnectionError | sa.exc.TimeoutError):
        return True
    if isinstance(exc, sa.exc.StatementError):
        # SQLAlchemy wraps driver errors (connecting through the engine): judge the
        # driver's error, and count a wrapped OperationalError as one.
        orig = exc.orig
        if orig is not None and (
            isinstance(orig, sqlite3.Error)
            or _psycopg_error(orig, "Error")
            or _pymysql_error(orig, "MySQLError")
        ):
            return is_transient(orig)
        return isinstance(exc, sa.exc.OperationalError)
    if _psycopg_error(exc, "OperationalError"):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return not sqlstate.startswith(_POSTGRES_PERMANENT_CLASSES)
    if _psycopg_error(exc, "InterfaceError"):
        return "connection" in str(exc).lower()  # "the connection is lost/closed"
    if _pymysql_error(exc, "MySQLError"):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code in _MYSQL_TRANSIENT:
            return True
        # "(0, '')" and "Connection closed": PyMySQL's own word for a dead connection.
        return _pymysql_error(exc, "InterfaceError")
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in _SQLITE_TRANSIENT
        text = str(exc).lower()
        return any(part in text for part in _SQLITE_TRANSIENT_TEXT)
    return False


def _psycopg_error(exc: Any, name: str) -> bool:
    # psycopg is imported only by a PostgreSQL storage: if it is not loaded, no error
    # of it can have been raised.
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, getattr(psycopg, name))


def _pymysql_error(exc: Any, name: str) -> bool:
    # Likewise PyMySQL, imported only by a MySQL storage.
    pymysql = sys.modules.get("pymysql")
    return pymysql is not None and isinstance(exc, getattr(pymysql, name))


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
