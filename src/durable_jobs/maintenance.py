"""Services a worker runs beside its jobs: heartbeats, the stale-lock reaper and retention.

Each has ``run_once()`` so tests drive them without waiting for a timer.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta

from .job import JobStatus
from .options import positive_seconds
from .release import __version__
from .retry import Backoff
from .storage import JobStore
from .storage.transient import retry_transient

__all__ = ["RETENTION_EVERY", "Heartbeat", "Reaper", "Retention"]

#: Seconds between a worker's retention passes (each deletes whatever is due).
RETENTION_EVERY = 300.0

log = logging.getLogger("durable_jobs")


class Heartbeat:
    """Keeps the locks of a worker's running jobs alive, and the worker listed as live."""

    def __init__(
        self,
        storage: JobStore,
        worker_id: str,
        queues: Sequence[str],
        types: Callable[[], Sequence[str]],
        running: Callable[[], Sequence[tuple[str, int]]],
        lock_timeout: timedelta | float = 30,
    ) -> None:
        self.storage = storage
        self.worker_id = worker_id
        self.queues = list(queues)
        self.types = types
        self.running = running
        #: Each heartbeat extends the worker's locks to this long from now.
        self.lock_timeout = lock_timeout
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.version = __version__

    def run_once(self) -> None:
        """One heartbeat: a single statement group for the worker and all its jobs.

        A transient failure (MySQL may pick a heartbeat as the victim of a deadlock with
        other writers of the jobs table) is retried at once, for up to a tenth of the
        lock timeout: the beat only writes times, so running it twice is harmless, and
        the next one is a fifth of the lock timeout away.
        """
        jobs = [job_id for job_id, _fence in self.running()]
        retry_transient(
            lambda: self.storage.heartbeat_worker(
                self.worker_id,
                host=self.host,
                pid=self.pid,
                queues=self.queues,
                types=self.types(),
                jobs=jobs,
                lock_timeout=self.lock_timeout,
                version=self.version,
            ),
            within=positive_seconds("lock_timeout", self.lock_timeout) / 10,
            what=f"worker {self.worker_id}: heartbeat",
        )


class Reaper:
    """Takes back jobs whose worker stopped heartbeating, and forgets dead workers.

    A job is taken back when its own lock expired, on the database's clock:
    ``lock_timeout`` (this worker's) only paces the reaper and prunes workers.
    ``backoff`` gives a job type's default backoff policy (its handler's) when known:
    a job taken back waits it before running again, like a failed run.
    """

    def __init__(
        self,
        storage: JobStore,
        lock_timeout: timedelta,
        backoff: Callable[[str], Backoff | None] | None = None,
    ) -> None:
        self.storage = storage
        self.lock_timeout = lock_timeout
        self.backoff = backoff

    def run_once(self) -> int:
        """Release expired locks once; returns how many jobs were taken back."""
        released = self.storage.release_expired_locks(backoff=self.backoff)
        if released:
            log.warning(
                "took back %d job(s) whose worker stopped heartbeating before its lock expired",
                released,
            )
        self.storage.prune_workers(self.lock_timeout * 10)
        return released


class Retention:
    """Prunes finished jobs past their status's age in the worker's ``retention`` policy.

    Runs in a thread of its own: a first pass over a big backlog takes a while, in small
    transactions, and must not hold up the heartbeats.
    """

    def __init__(self, storage: JobStore, policy: Mapping[JobStatus, timedelta]) -> None:
        self.storage = storage
        self.policy = dict(policy)

    def run_once(self, stop: threading.Event | None = None) -> int:
        """One pass over every status of the policy; returns how many jobs it deleted."""
        admin = self.storage.admin()
        deleted = 0
        for status, keep in self.policy.items():
            deleted += admin.prune(keep, [status], stop=stop)
        if deleted:
            log.info("retention: deleted %d finished job(s)", deleted)
        return deleted
