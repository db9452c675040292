"""Cross-process wake-ups: LISTEN/NOTIFY on PostgreSQL, a cheap watch on SQLite files."""

from __future__ import annotations

import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

__all__ = ["CHANNEL", "PostgresListener", "SQLiteWatcher"]

log = logging.getLogger("durable_jobs")

CHANNEL = "sdj_jobs"

Notify = Callable[[str], None]


class _Listener(ABC):
    """Reports queues that got new jobs, on a connection of its own outside the pool.

    Reconnects with backoff whenever the connection fails, and calls ``on_reconnect``
    so the worker re-checks for jobs it may have missed while deaf.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def run(
        self, on_notify: Notify, on_reconnect: Callable[[], None], stop: threading.Event
    ) -> None:
        """Report new jobs (as queue names) until ``stop`` is set."""
        delay = 0.1
        while not stop.is_set():
            conn: Any = None
            try:
                raw = self._engine.raw_connection()
                conn = raw.driver_connection
                raw.detach()  # ours for as long as we listen; never returned to the pool
                self._listen(conn, on_notify, on_reconnect, stop)
            except Exception as exc:
                if stop.is_set():
                    break
                log.warning("job notifications lost (%s); reconnecting in %.1f s", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)
            else:
                delay = 0.1
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        log.debug("closing the listener connection failed", exc_info=True)

    @abstractmethod
    def _listen(
        self, conn: Any, on_notify: Notify, on_reconnect: Callable[[], None], stop: threading.Event
    ) -> None:
        """Report new jobs on ``conn`` until ``stop`` is set; raise if ``conn`` fails."""


class PostgresListener(_Listener):
    """Listens on the jobs channel, which inserts notify with their queue's name."""

    def _listen(
        self, conn: Any, on_notify: Notify, on_reconnect: Callable[[], None], stop: threading.Event
    ) -> None:
        conn.autocommit = True
        conn.execute(f"LISTEN {CHANNEL}")
        on_reconnect()
        while not stop.is_set():
            # The timeout bounds how long a stopping worker waits for this thread.
            for note in conn.notifies(timeout=0.05):
                on_notify(note.payload)


class SQLiteWatcher(_Listener):
    """Notices jobs inserted by other processes into a SQLite file, within milliseconds.

    SQLite has no notifications. ``PRAGMA data_version`` changes when another connection
    commits, and reading it touches only shared memory, so it can be polled often; when
    it changes, the highest job rowid tells whether jobs were inserted (rather than
    updated by heartbeats and completions), and only then are workers woken.
    """

    def __init__(self, engine: sa.Engine, interval: float = 0.002) -> None:
        super().__init__(engine)
        self._interval = interval

    def _listen(
        self, conn: Any, on_notify: Notify, on_reconnect: Callable[[], None], stop: threading.Event
    ) -> None:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        last = conn.execute("SELECT coalesce(max(rowid), 0) FROM sdj_jobs").fetchone()[0]
        on_reconnect()
        while not stop.wait(self._interval):
            now = conn.execute("PRAGMA data_version").fetchone()[0]
            if now == version:
                continue
            version = now
            # One statement, so rows inserted meanwhile are neither lost nor counted twice.
            top, queues = conn.execute(
                "SELECT max(rowid), json_group_array(DISTINCT queue) FROM sdj_jobs WHERE rowid > ?",
                (last,),
            ).fetchone()
            if top is not None:
                last = top
                for queue in json.loads(queues):
                    on_notify(queue)
