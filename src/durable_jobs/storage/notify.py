"""Cross-process wake-ups: the reconnecting listener thread each backend's listener runs.

The listeners themselves live with their backends: ``PostgresListener`` (LISTEN/NOTIFY)
in ``postgres.py``, ``SQLiteWatcher`` (a cheap watch on the file) in ``sqlite.py``.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from ..backoff_loop import keep_trying

__all__ = ["CHANNEL", "ListenerThread", "Notify"]

log = logging.getLogger("durable_jobs")

CHANNEL = "sdj_jobs"  # the PostgreSQL channel inserts notify on

Notify = Callable[[str], None]


class ListenerThread(ABC):
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

        def listen() -> None:
            # Returns only once ``stop`` is set; raises when the connection fails.
            raw = self._engine.raw_connection()
            conn: Any = raw.driver_connection
            raw.detach()  # ours for as long as we listen; never returned to the pool
            try:
                self._listen(conn, on_notify, on_reconnect, stop)
            finally:
                try:
                    conn.close()
                except Exception:
                    log.debug("closing the listener connection failed", exc_info=True)

        if stop.is_set():
            return
        keep_trying(
            listen,
            give_up=lambda _exc: stop.is_set(),
            warn=lambda exc, wait: log.warning(
                "job notifications lost (%s); reconnecting in %.1f s", exc, wait
            ),
            pause=stop.wait,
        )

    @abstractmethod
    def _listen(
        self, conn: Any, on_notify: Notify, on_reconnect: Callable[[], None], stop: threading.Event
    ) -> None:
        """Report new jobs on ``conn`` until ``stop`` is set; raise if ``conn`` fails."""
