"""Cross-process wake-ups: LISTEN/NOTIFY on PostgreSQL, a cheap watch on SQLite files."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

__all__ = ["CHANNEL", "PostgresListener", "SQLiteWatcher"]

log = logging.getLogger("durable_jobs")

CHANNEL = "sdj_jobs"


class PostgresListener:
    """Listens on the jobs channel and reports each notified queue name.

    Holds one connection of its own outside the pool; reconnects with backoff when the
    server goes away, and calls ``on_reconnect`` so the worker re-checks for jobs it may
    have missed while deaf.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def run(
        self,
        on_notify: Callable[[str], None],
        on_reconnect: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        """Deliver notifications until ``stop`` is set."""
        delay = 0.1
        while not stop.is_set():
            conn: Any = None
            try:
                raw = self._engine.raw_connection()
                conn = raw.driver_connection
                raw.detach()  # ours for as long as we listen; never returned to the pool
                conn.autocommit = True
                conn.execute(f"LISTEN {CHANNEL}")
                on_reconnect()
                delay = 0.1
                while not stop.is_set():
                    for note in conn.notifies(timeout=0.5):
                        on_notify(note.payload)
            except Exception as exc:
                if stop.is_set():
                    break
                log.warning("job notifications lost (%s); reconnecting in %.1f s", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        log.debug("closing the listener connection failed", exc_info=True)


class SQLiteWatcher:
    """Notices jobs inserted by other processes into a SQLite file, within milliseconds.

    SQLite has no notifications. ``PRAGMA data_version`` changes when another connection
    commits, and reading it touches only shared memory, so it can be polled often; when
    it changes, the highest job rowid tells whether jobs were inserted (rather than
    updated by heartbeats and completions), and only then are workers woken.
    """

    def __init__(self, engine: sa.Engine, interval: float = 0.002) -> None:
        self._engine = engine
        self._interval = interval

    def run(
        self,
        on_notify: Callable[[str], None],
        on_reconnect: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        """Report new jobs (as queue names) until ``stop`` is set."""
        raw = self._engine.raw_connection()
        conn = raw.driver_connection
        assert conn is not None
        raw.detach()
        try:
            self._watch(conn, on_notify, on_reconnect, stop)
        finally:
            conn.close()

    def _watch(
        self,
        conn: Any,
        on_notify: Callable[[str], None],
        on_reconnect: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        last = conn.execute("SELECT coalesce(max(rowid), 0) FROM sdj_jobs").fetchone()[0]
        while not stop.wait(self._interval):
            try:
                now = conn.execute("PRAGMA data_version").fetchone()[0]
                if now == version:
                    continue
                version = now
                # One statement, so rows inserted meanwhile are neither lost nor counted.
                top, queues = conn.execute(
                    "SELECT max(rowid), json_group_array(DISTINCT queue) FROM sdj_jobs"
                    " WHERE rowid > ?",
                    (last,),
                ).fetchone()
            except Exception as exc:  # a locked or replaced file: look at every queue
                log.warning("watching for new jobs failed (%s)", exc)
                on_reconnect()
                continue
            if top is not None:
                last = top
                for queue in json.loads(queues):
                    on_notify(queue)
