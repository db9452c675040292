"""Notices that jobs may have finished, from any process: what wakes ``Queue.result``.

A waiter watches a job with a callback; the backend's outcome listener (PostgreSQL:
LISTEN on the channel a trigger notifies when a watched job finishes; SQLite: the file's
change counter) calls it when the job may have an outcome, and the waiter reads the job
again. The listener runs in a thread of its own only while some job is watched, and
calls every callback when it (re)connects, since notices may have been missed while it
was deaf. Backends without notices (MySQL) have no listener: waiters re-read on a timer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .notify import ListenerThread

__all__ = ["OUTCOME_CHANNEL", "OutcomeNotices"]

log = logging.getLogger("durable_jobs")

#: The PostgreSQL channel a watched job's id is notified on when it finishes.
OUTCOME_CHANNEL = "sdj_outcomes"

# How long a new watcher waits for the listener to listen before it reads the job
# anyway (it then re-reads on its timer until the listener is up).
_READY_TIMEOUT = 5.0


class OutcomeNotices:
    """The watched jobs of one storage and the listener thread that serves them."""

    def __init__(self, listener: ListenerThread) -> None:
        self._listener = listener
        self._lock = threading.Lock()
        self._watchers: dict[str, set[Callable[[], None]]] = {}
        self._stop: threading.Event | None = None
        self._ready = threading.Event()

    def watch(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever job ``job_id`` may have finished, until the returned
        function is called. Returns once the listener listens (or gave up waiting), so
        an outcome committed after this returns is noticed."""
        with self._lock:
            self._watchers.setdefault(job_id, set()).add(callback)
            if self._stop is None:
                self._start()
            ready = self._ready
        ready.wait(_READY_TIMEOUT)
        return lambda: self._unwatch(job_id, callback)

    def watched(self) -> list[str]:
        """The ids of the jobs watched now."""
        with self._lock:
            return list(self._watchers)

    def close(self) -> None:
        """Stop the listener (the storage is closing)."""
        with self._lock:
            self._watchers.clear()
            self._stop_listener()

    def _unwatch(self, job_id: str, callback: Callable[[], None]) -> None:
        with self._lock:
            callbacks = self._watchers.get(job_id)
            if callbacks is not None:
                callbacks.discard(callback)
                if not callbacks:
                    del self._watchers[job_id]
            if not self._watchers:
                self._stop_listener()

    def _start(self) -> None:
        stop = self._stop = threading.Event()
        ready = self._ready = threading.Event()

        def reconnected() -> None:
            ready.set()
            self._call(None)

        thread = threading.Thread(
            target=self._listener.run,
            args=(self._call, reconnected, stop),
            name="sdj-outcomes",
            daemon=True,
        )
        thread.start()

    def _stop_listener(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def _call(self, job_id: str | None) -> None:
        """Call the callbacks of ``job_id`` (every job's for None or '': something may
        have finished, the listener cannot tell what)."""
        with self._lock:
            if job_id:
                callbacks = list(self._watchers.get(job_id, ()))
            else:
                callbacks = [c for watched in self._watchers.values() for c in watched]
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one waiter's failure must not deafen the others
                log.exception("an outcome watcher failed")
