"""``Worker``: claims jobs, runs them in slots, stores outcomes, and stops gracefully.

This module is the lifecycle and the wiring; each thread's work is its own module:

- the dispatcher (``dispatcher.py``) claims as many due jobs as a queue has free slots,
  in one statement, and hands them to slot threads (sync handlers) or to one event-loop
  thread (async handlers);
- the completer (``completer.py``) stores outcomes in batches (one statement for many
  completions) and passes them to the reporter (``reporter.py``), which fires hooks and
  events, so they only ever report what is committed;
- the maintenance thread heartbeats running jobs and takes back stale ones;
- a listener (the storage's) turns other processes' new jobs into immediate wake-ups.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from .completer import Completer
from .dispatcher import Dispatcher
from .job import Job
from .maintenance import RETENTION_EVERY, Heartbeat, Reaper, Retention
from .operations import check_retention
from .options import DEFAULT_CONCURRENCY, non_negative_seconds, parse_queues, positive_seconds
from .reporter import Reporter
from .retry import Backoff
from .scheduler import Scheduler

if TYPE_CHECKING:
    from .queue import Queue
    from .storage.protocol import JobStore

__all__ = ["DEFAULT_CONCURRENCY", "Worker"]

log = logging.getLogger("durable_jobs")

DEFAULT_SHUTDOWN_TIMEOUT = 30.0
# The storages whose upkeep warning was looked for: one warning however many workers
# start on a storage (tests and benchmarks start dozens).
_upkeep_checked: weakref.WeakSet[JobStore] = weakref.WeakSet()
_upkeep_lock = threading.Lock()
# After stopping gave up on running jobs, how long writes releasing them may keep failing.
_RELEASE_GRACE = 2.0
# Runs are checked against their timeouts this often (seconds), and against cancels by
# other processes this often while any runs: a cancel is noticed within a second.
_POLICE_EVERY = 0.05
_CANCEL_LOOK_EVERY = 0.5
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    """Log INFO and above to stderr, unless the application configured logging.

    ``run()`` calls it so that a worker started from a script says what it does (and
    why its jobs fail); ``start()`` never does: a library's threads inside someone's
    application must not touch its logging.
    """
    if logging.getLogger().handlers or log.handlers:
        return
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


class Worker:
    """Runs the jobs of some queues with a concurrency limit per queue.

    Made by ``Queue.worker()``. ``run()`` blocks (SIGINT/SIGTERM stop it gracefully),
    ``start()`` runs in the background, ``stop()`` drains, and ``with`` does both.

    Without ``queues`` it serves ``"default"`` and every queue its handlers (and
    schedules) name, with concurrency 10 each. ``shutdown_timeout`` (seconds or a
    timedelta, default 30) is how long stopping lets running jobs finish before it
    releases them for other workers.
    """

    def __init__(
        self,
        queue: Queue,
        queues: Mapping[str, int] | Sequence[str] | None = None,
        *,
        scheduler: bool = False,
        lock_timeout: timedelta | float = 30,
        poll_interval: timedelta | float = 1.0,
        worker_id: str | None = None,
        shutdown_timeout: timedelta | float = DEFAULT_SHUTDOWN_TIMEOUT,
        retention: Mapping[str, timedelta] | None = None,
    ) -> None:
        self.queue = queue
        #: How long finished jobs are kept, per status (None: the worker prunes none).
        self.retention = check_retention(retention)
        self._retention: Retention | None = None
        #: Whether the queues were given, or follow the handlers (see ``start``).
        self._queues_given = queues is not None
        self.concurrency = parse_queues(queues, self._named_queues())
        self.scheduler = scheduler
        self.lock_timeout = positive_seconds("lock_timeout", lock_timeout)
        self.poll_interval = positive_seconds("poll_interval", poll_interval)
        self.shutdown_timeout = non_negative_seconds("shutdown_timeout", shutdown_timeout)
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._build()
        #: The signal that asked to stop at once (a second SIGINT or SIGTERM), if any.
        self._forced_by: int | None = None
        self._signals = 0
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._service_stop = threading.Event()
        self._state = "new"
        self._state_lock = threading.Lock()
        self._stop_callbacks: list[Callable[[], None]] = []
        self._threads: list[threading.Thread] = []
        self._services: list[threading.Thread] = []
        self._dispatcher_thread: threading.Thread | None = None
        self._completer_thread: threading.Thread | None = None
        self._reporter_thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.id} queues={self.concurrency} {self._state}>"

    def _build(self) -> None:
        self._dispatcher = Dispatcher(
            self.queue,
            self.id,
            self.concurrency,
            lock_timeout=self.lock_timeout,
            poll_interval=self.poll_interval,
        )
        self._reporter = Reporter(self.queue, self.id)
        self._completer = Completer(
            self.queue, self._dispatcher, self._reporter.backlog, self.id, self.lock_timeout
        )

    def _named_queues(self) -> dict[str, list[str]]:
        """The queues the queue's handlers and schedules send jobs to, with their types."""
        named: dict[str, list[str]] = {}
        for name in self.queue.job_types:
            handler = self.queue.handler(name)
            if handler is not None:
                named.setdefault(handler.defaults.get("queue", "default"), []).append(name)
        for name, (_schedule, _args, options) in self.queue.schedules.items():
            if "queue" in options:
                named.setdefault(options["queue"], []).append(name)
        return named

    def _check_queues(self) -> None:
        """Serve the queues handlers registered since ``__init__`` named (queues not
        given), or warn about those this worker leaves to others (queues given)."""
        named = self._named_queues()
        if not self._queues_given:
            concurrency = parse_queues(None, named)
            if concurrency != self.concurrency:
                self.concurrency = concurrency
                self._build()
            return
        unserved = {q: types for q, types in named.items() if q not in self.concurrency}
        if unserved:
            log.warning(
                "worker %s serves queue(s) %s only: jobs of %s wait for another worker "
                "(leave queues out to serve every queue the handlers name)",
                self.id,
                ", ".join(map(repr, self.concurrency)),
                "; ".join(
                    f"{', '.join(types)} in queue {q!r}" for q, types in sorted(unserved.items())
                ),
                extra={"worker_id": self.id},
            )

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start working in background threads and return at once."""
        with self._state_lock:
            if self._state != "new":
                raise RuntimeError(f"worker already {self._state}; make a new one to start again")
            # Before the state changes: a schedule without a handler fails start() cleanly.
            self._scheduler = Scheduler(self.queue) if self.scheduler else None
            self._check_queues()
            self._state = "running"
        try:
            storage = self.queue.storage  # migrates a URL-made queue before threads race to
            storage.require_schema()  # a clear error now, not failures logged forever
        except BaseException:
            # Nothing runs yet (the database may be down): the worker is stopped, so the
            # caller sees this error and a stop() (as in run()) returns at once.
            with self._state_lock:
                self._state = "stopped"
            self._stopped.set()
            raise
        self._heartbeat = Heartbeat(
            storage,
            self.id,
            list(self.concurrency),
            lambda: self.queue.job_types,
            self._dispatcher.running_jobs,
            self.lock_timeout,
        )
        self._reaper = Reaper(storage, timedelta(seconds=self.lock_timeout), self._default_backoff)
        if self.retention is not None:
            self._retention = Retention(storage, self.retention)
        self._run_service("heartbeat", self._heartbeat.run_once)  # listed as live before claiming
        self._warn_upkeep(storage)
        for handler_name in self.queue.job_types:
            handler = self.queue.handler(handler_name)
            if handler is not None and handler.is_async:
                self._start_loop()
                break
        for n in range(self._dispatcher.slots):
            self._spawn(f"slot-{n}", self._dispatcher.run_slot, self._threads)
        self._completer_thread = self._spawn("completer", self._completer.run, [])
        self._reporter_thread = self._spawn("reporter", self._reporter.run, [])
        self._spawn("maintenance", self._maintenance_loop, self._services)
        self._spawn("control", self._control_loop, self._services)
        if self._retention is not None:
            self._spawn("retention", self._retention_loop, self._services)
        self._start_listener()
        self.queue.attach(self)
        self._dispatcher_thread = self._spawn("dispatcher", self._dispatcher.run, [])
        log.info(
            "worker %s started: queues %s, lock timeout %gs",
            self.id,
            self.concurrency,
            self.lock_timeout,
            extra={"worker_id": self.id},
        )

    def stop(self, timeout: timedelta | float | None = None) -> None:
        """Stop claiming, let running jobs finish (up to ``timeout``, by default the
        ``shutdown_timeout``), then release those still running for other workers.

        Thread-safe and idempotent. A handler still running when the timeout ends is
        abandoned: its thread (a daemon) goes on, but its outcome is dropped.
        """
        seconds = (
            self.shutdown_timeout if timeout is None else non_negative_seconds("timeout", timeout)
        )
        with self._state_lock:
            state = self._state
            if state == "new":
                self._state = "stopped"
                self._stopped.set()
            elif state == "running":
                self._state = "stopping"
        self._request_stop()
        if state != "running":
            self._stopped.wait(seconds if state == "stopping" else 0)
            return
        self._drain(seconds)

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        dispatcher, completer = self._dispatcher, self._completer
        completer.give_up(deadline)
        dispatcher.stop_claiming()
        assert self._dispatcher_thread is not None and self._completer_thread is not None
        assert self._reporter_thread is not None
        self._dispatcher_thread.join()
        dispatcher.release_unstarted()
        unfinished = dispatcher.wait_finished(max(0.0, deadline - time.monotonic()))
        if unfinished:
            self._abandon_running(timeout)
            deadline = min(deadline, time.monotonic() + _RELEASE_GRACE)
            completer.give_up(deadline)
        dispatcher.stop_slots(len(self._threads))
        completer.close()
        self._join(self._completer_thread, lambda: deadline + 1)
        # Hooks are not waited for once stopping was told to hurry (a second signal).
        self._join(self._reporter_thread, lambda: 0 if dispatcher.abandoned.is_set() else deadline)
        if self._reporter_thread.is_alive():
            log.warning(
                "worker %s stopped before the hooks and events of %d stored outcome(s) ran; "
                "they run in the background while the process lives",
                self.id,
                self._reporter.backlog.pending,
            )
        self._service_stop.set()
        for thread in self._services:
            thread.join(5)
        self._stop_loop()
        self._run_service("unregister", lambda: self.queue.storage.remove_worker(self.id))
        self.queue.detach(self)
        with self._state_lock:
            self._state = "stopped"
        self._stopped.set()
        log.info("worker %s stopped", self.id, extra={"worker_id": self.id})

    def _abandon_running(self, timeout: float) -> None:
        """Release the jobs still running (their runs are abandoned) for other workers."""
        dispatcher = self._dispatcher
        forced = dispatcher.abandoned.is_set()
        dispatcher.abandon()
        unfinished = dispatcher.release_running()
        if forced:
            args: list[float] = [unfinished]
            what = "stopping at once: released %d running job(s)"
        else:
            what = "%d job(s) still running after the shutdown timeout of %g s: released them"
            args = [unfinished, timeout]
        log.warning(
            "worker %s: " + what + " for other workers without counting the attempt "
            "(their handlers are abandoned, their outcomes dropped)",
            self.id,
            *args,
            extra={"worker_id": self.id},
        )

    @staticmethod
    def _join(thread: threading.Thread, deadline: Callable[[], float]) -> None:
        """Join ``thread`` until ``deadline()`` (a ``time.monotonic()`` value, read again
        as it waits: a second signal moves it earlier)."""
        while thread.is_alive():
            left = deadline() - time.monotonic()
            if left <= 0:
                return
            thread.join(min(left, 0.1))

    def _request_stop(self) -> None:
        self._stop_requested.set()
        self._dispatcher.executor.stop_runs(None, "stopping")  # should_stop() turns true
        for callback in list(self._stop_callbacks):
            callback()

    def run(self) -> None:
        """Work until ``stop()``, SIGINT or SIGTERM, then drain and return.

        On a signal (in the main thread) it stops claiming and lets running jobs finish
        for up to ``shutdown_timeout`` seconds, then releases those still running for
        other workers and returns. A second SIGINT or SIGTERM during that drain stops at
        once: running jobs are released (they go back to pending or retrying without
        using an attempt), async ones are cancelled, sync handler threads are abandoned.
        After a second SIGINT, ``run()`` then raises ``KeyboardInterrupt``, as Ctrl-C
        does in any Python program; after a second SIGTERM it returns.

        If the application has not configured logging (the root logger has no
        handlers), ``run()`` logs INFO and above to stderr first.

        ``run()`` makes the process a worker: what it has loaded by then (the
        application, its libraries) is kept out of the garbage collector's full passes
        (``gc.freeze()``), which would otherwise walk it all, stalling every job under
        way for tens of milliseconds.
        """
        configure_logging()
        restore = self._install_signal_handlers()
        try:
            self.start()
            gc.freeze()
            while not self._stop_requested.wait(0.5):
                pass
        finally:
            try:
                self.stop()
            finally:
                for signum, previous in restore.items():
                    signal.signal(signum, previous)
        if self._forced_by == signal.SIGINT:
            raise KeyboardInterrupt

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            self._signals += 1
            if self._signals == 1:
                log.warning(
                    "worker %s received %s; draining: running jobs may finish for up to "
                    "%g s (%s again stops at once)",
                    self.id,
                    name,
                    self.shutdown_timeout,
                    name,
                    extra={"worker_id": self.id},
                )
                self._request_stop()
            elif self._forced_by is None:
                log.warning(
                    "worker %s received %s again; stopping at once, releasing running jobs",
                    self.id,
                    name,
                    extra={"worker_id": self.id},
                )
                self._forced_by = signum
                self._request_stop()
                self._dispatcher.abandon()

        return {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    async def run_async(self) -> None:
        """``run()`` for asyncio programs; cancelling the task drains gracefully too.

        Installs no signal handlers (the program's event loop owns them); it configures
        logging as ``run()`` does.
        """
        configure_logging()
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()

        def resolve() -> None:
            if not stopped.done():
                stopped.set_result(None)

        def notify() -> None:
            loop.call_soon_threadsafe(resolve)

        self._stop_callbacks.append(notify)
        starting = asyncio.ensure_future(asyncio.to_thread(self.start))
        try:
            # Shielded: jobs run before start() returns, so a task cancelled meanwhile
            # must let the start finish and then drain, never leave the worker running.
            await asyncio.shield(starting)
            await stopped
        finally:
            await asyncio.wait([starting])  # at once unless cancelled while starting
            if starting.exception() is None:  # a start that failed has stopped already
                await asyncio.to_thread(self.stop)

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._state in ("running", "stopping")

    # -- the queue's hand-off (``queue.LocalWorker``) -----------------------------------

    def wake(self, queues: Sequence[str] | set[str]) -> None:
        """Look for jobs in ``queues`` now rather than at the next poll."""
        self._dispatcher.wake(queues)

    def wake_all(self) -> None:
        """Look for jobs in every queue now."""
        self._dispatcher.wake_all()

    def wake_at(self, due: Mapping[str, datetime]) -> None:
        """Look for jobs in each queue of ``due`` at its time (the earliest ``run_at`` of
        jobs just stored there to run later), rather than at the next poll after it."""
        for name, run_at in due.items():
            self._dispatcher.wake_at(name, run_at)

    def take_enqueued(self, job: Job) -> bool:
        """Reserve a free slot for ``job``, about to be enqueued in this process, so that it
        is stored already claimed by this worker (``start_enqueued``): no claim, no wait.
        """
        return self._state == "running" and self._dispatcher.take_enqueued(job)

    def give_back_enqueued(self, job: Job) -> None:
        """The enqueue ``take_enqueued`` reserved room for failed."""
        self._dispatcher.give_back_enqueued(job)

    def start_enqueued(self, job: Job) -> None:
        """Run ``job``, stored claimed by this worker after ``take_enqueued``."""
        self._dispatcher.start_enqueued(job)

    # -- services -----------------------------------------------------------------------

    def _start_listener(self) -> None:
        listener = self.queue.storage.listener()
        if listener is None:
            return  # one process: in-process wake-ups reach every worker
        dispatcher = self._dispatcher
        self._spawn(
            "listener",
            lambda: listener.run(dispatcher.on_notify, dispatcher.wake_all, self._service_stop),
            self._services,
        )

    def _default_backoff(self, job_type: str) -> Backoff | None:
        """The backoff policy the handler of ``job_type`` registered with, if any."""
        handler = self.queue.handler(job_type)
        policy: Backoff | None = None if handler is None else handler.defaults.get("backoff")
        return policy

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._dispatcher.loop = loop
        self._spawn("async", loop.run_forever, [])

    def _stop_loop(self) -> None:
        loop = self._dispatcher.loop
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        self._dispatcher.loop = None

    def _maintenance_loop(self) -> None:
        beat_every = self.lock_timeout / 5
        reap_every = self.lock_timeout / 2
        next_beat = time.monotonic() + beat_every
        next_reap = time.monotonic()
        next_fire = time.monotonic() if self._scheduler is not None else float("inf")
        while not self._service_stop.wait(
            max(0.0, min(next_beat, next_reap, next_fire) - time.monotonic())
        ):
            now = time.monotonic()
            if now >= next_beat:
                self._run_service("heartbeat", self._heartbeat.run_once)
                next_beat = now + beat_every
            if now >= next_reap:
                if self._run_service("reaper", self._reaper.run_once):
                    self.wake_all()
                next_reap = now + reap_every
            if self._scheduler is not None and now >= next_fire:
                if self._run_service("scheduler", self._scheduler.run_once):
                    self.wake_all()
                next_fire = time.monotonic() + self._scheduler.seconds_until_due()

    def _retention_loop(self) -> None:
        retention = self._retention
        assert retention is not None
        while not self._service_stop.is_set():
            self._run_service("retention", partial(retention.run_once, self._service_stop))
            if self._service_stop.wait(RETENTION_EVERY):
                return

    def _control_loop(self) -> None:
        """Stop the runs that passed their timeout, and those whose job was cancelled
        (by another process: this one's cancels reach its runs at once)."""
        executor = self._dispatcher.executor
        storage = self.queue.storage
        next_look = time.monotonic()
        while not self._service_stop.wait(_POLICE_EVERY):
            running = executor.police()
            if running and time.monotonic() >= next_look:
                look = partial(storage.cancelled_among, running)
                found = self._run_service("cancel watch", look)
                if found:
                    executor.stop_runs(found, "cancelled")
                next_look = time.monotonic() + _CANCEL_LOOK_EVERY

    def cancel_runs(self, job_ids: set[str]) -> None:
        """Tell this worker's runs of ``job_ids`` (just cancelled) to stop."""
        self._dispatcher.executor.stop_runs(job_ids, "cancelled")

    def _warn_upkeep(self, storage: JobStore) -> None:
        """Log the database's upkeep warning, if it has one, once per storage."""
        with _upkeep_lock:
            if storage in _upkeep_checked:
                return
            _upkeep_checked.add(storage)
        upkeep = self._run_service("upkeep check", storage.upkeep_warning)
        if upkeep:
            log.warning("worker %s: %s", self.id, upkeep, extra={"worker_id": self.id})

    def _run_service(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            log.warning(
                "worker %s: %s failed: %s", self.id, name, exc, extra={"worker_id": self.id}
            )
            return None

    def _spawn(
        self, name: str, target: Callable[[], Any], group: list[threading.Thread]
    ) -> threading.Thread:
        # Daemon threads: a handler that never returns must not keep the process alive
        # after stop() has given up on it.
        thread = threading.Thread(target=target, name=f"sdj-{name}", daemon=True)
        thread.start()
        group.append(thread)
        return thread
