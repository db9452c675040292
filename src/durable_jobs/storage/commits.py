"""Work to do once a caller's transaction commits, and to forget if it rolls back.

``enqueue(..., connection=conn)`` writes inside the caller's transaction: the job exists
only if that transaction commits, so its event, metrics and wake-ups must wait for the
commit. SQLAlchemy Core has no after-commit event (its ``commit`` event comes before the
database has answered), so the engine's dialect is watched where it commits and rolls
back the driver's connection: the pool's rollback of a connection closed without a
commit passes there too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

__all__ = ["after_commit"]

log = logging.getLogger("durable_jobs")

_PENDING = "sdj_after_commit"  # key in the driver connection's info dict
_WATCHED = "_sdj_watches_commits"
_lock = threading.Lock()

# A callback and the savepoints open when it was registered: rolling back to any of
# them undoes the work the callback announces.
_Pending = tuple[frozenset[str], Callable[[], None]]


def after_commit(connection: sa.Connection, callback: Callable[[], None]) -> None:
    """Run ``callback`` once ``connection``'s transaction commits; never if it rolls back.

    On a connection in autocommit, or outside a transaction, the work is already
    committed and ``callback`` runs at once. A callback that raises is logged.
    """
    if not connection.in_transaction() or _autocommits(connection):
        _run([(frozenset(), callback)])
        return
    _watch(connection.engine)
    pending: list[_Pending] = connection.info.setdefault(_PENDING, [])
    pending.append((_savepoints(connection), callback))


def _autocommits(connection: sa.Connection) -> bool:
    check = getattr(connection, "_is_autocommit_isolation", None)
    return bool(check()) if check is not None else False


def _savepoints(connection: sa.Connection) -> frozenset[str]:
    names = set()
    nested: Any = connection.get_nested_transaction()
    while nested is not None:
        names.add(nested._savepoint)
        nested = nested._previous_nested
    return frozenset(names)


def _watch(engine: sa.Engine) -> None:
    dialect: Any = engine.dialect
    with _lock:
        if getattr(dialect, _WATCHED, False):
            return
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_connection: Any) -> None:
            commit(dbapi_connection)
            _run(dbapi_connection.info.pop(_PENDING, None))

        def do_rollback(dbapi_connection: Any) -> None:
            # Forgotten first: whether the rollback succeeds or the connection is lost,
            # the transaction's work is gone.
            dbapi_connection.info.pop(_PENDING, None)
            rollback(dbapi_connection)

        dialect.do_commit, dialect.do_rollback = do_commit, do_rollback
        sa.event.listen(engine, "rollback_savepoint", _rolled_back_to)
        setattr(dialect, _WATCHED, True)


def _rolled_back_to(connection: sa.Connection, name: str, _context: Any) -> None:
    pending: list[_Pending] | None = connection.info.get(_PENDING)
    if pending:
        pending[:] = [entry for entry in pending if name not in entry[0]]


def _run(pending: list[_Pending] | None) -> None:
    for _savepoints_open, callback in pending or ():
        try:
            callback()
        except Exception:
            log.exception("work after a commit failed")
