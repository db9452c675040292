"""Cross-process wake-ups: PostgreSQL LISTEN/NOTIFY. SQLite workers poll instead."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

__all__ = ["CHANNEL", "PostgresListener"]

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
