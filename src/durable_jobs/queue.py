"""``Queue``: the handler registry and the enqueueing side. It never sees SQL."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import sqlalchemy as sa

from . import codec, results
from . import operations as ops
from .clock import SYSTEM_CLOCK, Clock
from .errors import JobNotFound
from .events import EventBus, EventStream, Hooks, JobCancelled, JobEnqueued, JobPaused
from .explain import Explanation, explain_job
from .handler import Handler, inspect_handler
from .instrument import Instruments, wrapped
from .job import Job, JobStatus
from .options import (
    LIMIT_OPTIONS,
    Limits,
    check_job_name,
    check_options,
    check_queue_name,
    limit_key,
    not_a_schedule,
)
from .storage import JobStore, SQLStorage
from .storage.admin import Cursor, JobPage
from .storage.commits import after_commit
from .waiting import check_signal_name

if TYPE_CHECKING:
    from .schedules import Schedule
    from .worker import Worker

__all__ = ["DEFAULT_DATABASE_URL", "LocalWorker", "Queue"]

DEFAULT_DATABASE_URL = "sqlite:///jobs.db"
DEFAULT_QUEUE = "default"
DEFAULT_RETRIES = 3
# Arguments are one row's text, read back on every claim: a cap keeps a mistaken
# enqueue (a whole file, say) from bloating the table and every worker's memory.
DEFAULT_MAX_PAYLOAD = 1024 * 1024  # bytes of JSON-encoded arguments

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# A job's defaults, given at registration or with a schedule, and overridden at enqueue.
_JOB_DEFAULTS = frozenset({"priority", "retries", "queue", "backoff", "delay", "timeout", "tags"})
_REGISTER_OPTIONS = _JOB_DEFAULTS | LIMIT_OPTIONS
_ENQUEUE_OPTIONS = _JOB_DEFAULTS | {"at", "connection", "unique_key", "unique_for", "meta"}
_TEMPLATE_TIME = datetime(1970, 1, 1, tzinfo=UTC)  # a template's, replaced by each copy's


class LocalWorker(Protocol):
    """A running worker of this process, as the queue hands it work (``Worker`` is one).

    The queue wakes it when jobs it could run are stored, and offers it a single due job
    about to be enqueued: a worker that takes it gets the job stored already claimed by
    it and starts it at once.
    """

    @property
    def id(self) -> str: ...

    @property
    def lock_timeout(self) -> float: ...

    def wake(self, queues: Sequence[str] | set[str]) -> None:
        """Look for jobs in ``queues`` now rather than at the next poll."""
        ...

    def wake_at(self, due: Mapping[str, datetime]) -> None:
        """Look for jobs in each queue of ``due`` at its time (the earliest ``run_at`` of
        jobs just stored there to run later)."""
        ...

    def take_enqueued(self, job: Job) -> bool:
        """Reserve a free slot for ``job``; True if it is to be stored claimed by this one."""
        ...

    def cancel_runs(self, job_ids: set[str]) -> None:
        """Tell its runs of ``job_ids``, just cancelled, to stop."""
        ...

    def give_back_enqueued(self, job: Job) -> None:
        """The enqueue ``take_enqueued`` reserved room for failed."""
        ...

    def start_enqueued(self, job: Job) -> None:
        """Run ``job``, stored claimed by this worker after ``take_enqueued``."""
        ...


class Queue:
    """Registers handlers, enqueues jobs and makes workers.

    ``Queue(storage)``, ``Queue("postgresql://...")`` (migrated on first use) or
    ``Queue()`` for ``$SDJ_DATABASE_URL``, else ``sqlite:///jobs.db``. ``max_payload``
    caps a job's JSON-encoded arguments (default 1 MiB; None for no cap): a bigger
    enqueue raises ``ValueError`` and writes nothing. ``clock`` (default: the system's)
    is where the queue and its storage read the time (``durable_jobs.testing.FakeClock``).
    """

    def __init__(
        self,
        storage: JobStore | str | None = None,
        *,
        max_payload: int | None = DEFAULT_MAX_PAYLOAD,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_payload is not None and (
            isinstance(max_payload, bool) or not isinstance(max_payload, int) or max_payload < 1
        ):
            raise ValueError(
                f"max_payload must be a positive number of bytes or None, got {max_payload!r}"
            )
        #: The most bytes a job's JSON-encoded arguments may take (None: no limit).
        self.max_payload = max_payload
        if storage is None:
            storage = os.environ.get("SDJ_DATABASE_URL") or DEFAULT_DATABASE_URL
        self._needs_migrate = isinstance(storage, str)
        if isinstance(storage, str):
            storage = SQLStorage(storage)
        elif not isinstance(storage, JobStore):
            raise TypeError(
                "Queue needs a database URL or a storage implementing"
                f" durable_jobs.storage.JobStore (such as SQLStorage), got {type(storage).__name__}"
            )
        self._storage: JobStore = storage
        #: Where this queue (and its storage, when it has ``use_clock``) reads the time.
        self.clock = clock
        if clock is not SYSTEM_CLOCK:
            use_clock = getattr(storage, "use_clock", None)
            if use_clock is None:
                raise TypeError(f"{type(storage).__name__} cannot take a clock of its own")
            use_clock(clock)
        self._migrate_lock = threading.Lock()
        self._handlers: dict[str, Handler] = {}
        # Per registered type: its options with nothing given at enqueue, and the fields
        # of the job they make (None when they delay it), which such enqueues copy.
        self._plain: dict[str, tuple[dict[str, Any], list[Any] | None]] = {}
        self._names: dict[Callable[..., Any], str] = {}
        self.hooks = Hooks()
        self.bus = EventBus()
        self.instruments = Instruments()
        self.schedules: dict[str, tuple[Schedule, Any, dict[str, Any]]] = {}
        self._workers: weakref.WeakSet[LocalWorker] = weakref.WeakSet()
        # Parents resumed by their children's outcomes run here at once if a worker is free.
        this = weakref.ref(self)

        def woken(queues: Sequence[str]) -> None:
            queue = this()
            if queue is not None:
                for worker in list(queue._workers):
                    worker.wake(queues)

        self._storage.add_wake_listener(woken)

    def __repr__(self) -> str:
        return f"Queue({self._storage!r})"

    # -- storage ------------------------------------------------------------------------

    @property
    def storage(self) -> JobStore:
        """The storage this queue uses (migrated first when the queue was given a URL)."""
        if self._needs_migrate:
            with self._migrate_lock:
                if self._needs_migrate:
                    self._storage.migrate()
                    self._needs_migrate = False
        return self._storage

    # -- registry -----------------------------------------------------------------------

    def register(self, name: str, fn: Callable[..., Any], **options: Any) -> None:
        """Register ``fn`` as the handler of job type ``name``.

        ``options`` (priority, retries, queue, backoff, delay) are defaults for jobs of
        this type. Registering a name twice or an unusable function raises ``ValueError``.
        """
        check_job_name(name)
        if name in self._handlers:
            raise ValueError(f"a handler for {name!r} is already registered")
        checked = check_options(options, _REGISTER_OPTIONS, f"register({name!r})")
        defaults = {k: v for k, v in checked.items() if k not in LIMIT_OPTIONS}
        handler = inspect_handler(name, fn, defaults, Limits.from_options(checked))
        self._handlers[name] = handler
        self._names.setdefault(fn, name)

    def job(self, name: str | None = None, **options: Any) -> Callable[[F], F]:
        """Decorator form of ``register``; the name defaults to the function's name."""

        def decorate(fn: F) -> F:
            self.register(name or fn.__name__, fn, **options)
            return fn

        return decorate

    def handler(self, name: str) -> Handler | None:
        """The registered handler of ``name``, if any."""
        return self._handlers.get(name)

    @property
    def job_types(self) -> list[str]:
        """The names of all registered job types."""
        return list(self._handlers)

    def resolve_name(self, name_or_fn: str | Callable[..., Any]) -> str:
        """The job type for a name or a registered function."""
        if isinstance(name_or_fn, str):
            if name_or_fn in self._handlers:  # checked when it was registered
                return name_or_fn
            return check_job_name(name_or_fn)
        try:
            return self._names[name_or_fn]
        except (KeyError, TypeError):
            raise ValueError(f"{name_or_fn!r} is not a registered handler") from None

    # -- enqueue ------------------------------------------------------------------------

    def build_job(
        self,
        name_or_fn: str | Callable[..., Any],
        args: Any,
        options: Mapping[str, Any],
        now: datetime | None = None,
    ) -> Job:
        """Validate and encode a job without storing it (created ``now``: the queue
        clock's by default)."""
        name = self.resolve_name(name_or_fn)
        when = self.clock.now() if now is None else now
        return self._new_job(name, args, self._job_options(name, options), when)

    def _job_options(self, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """Checked options with the handler's defaults under them (not to be mutated:
        a registered type's defaults alone are computed once)."""
        if not options and (plain := self._plain.get(name)) is not None:
            return plain[0]
        opts = check_options(options, _ENQUEUE_OPTIONS, f"enqueue({name!r})")
        handler = self._handlers.get(name)
        if handler is not None:
            opts = {**handler.defaults, **opts}
            if "at" in options:
                opts.pop("delay", None)
            if not options:  # a handler is registered once, and never replaced
                timed = "delay" in opts or "at" in opts
                template = None if timed else self._job_of(name, opts, _TEMPLATE_TIME)
                self._plain[name] = (opts, None if template is None else _fields_of(template))
        return opts

    def _new_job(self, name: str, args: Any, opts: Mapping[str, Any], now: datetime) -> Job:
        plain = self._plain.get(name)
        if plain is not None and plain[0] is opts and plain[1] is not None:
            job = _copy_of(plain[1], now)  # several times cheaper than building it
        else:
            job = self._job_of(name, opts, now)
        job.args = self._encode_args(name, args)
        handler = self._handlers.get(name)
        limits = handler.limits if handler is not None else None
        if limits is not None:
            # Computed where the handler is registered: a producer without it stores no
            # key, and the job counts under the type's cap as a whole.
            if limits.concurrency_key is not None:
                job.concurrency_key = limit_key(
                    "concurrency_key", limits.concurrency_key, args, name
                )
            if limits.rate_key is not None:
                job.rate_key = limit_key("rate_key", limits.rate_key, args, name)
        return job

    def _job_of(self, name: str, opts: Mapping[str, Any], now: datetime) -> Job:
        """A new job of ``name`` with ``opts``, created ``now`` (its ``args`` not set)."""
        try:
            run_at = opts.get("at") or (now + opts["delay"] if "delay" in opts else None)
        except OverflowError:
            raise ValueError(f"delay is out of range: {opts['delay']!r}") from None
        backoff = opts.get("backoff")
        return Job(
            type=name,
            queue=opts.get("queue", DEFAULT_QUEUE),
            priority=opts.get("priority", 0),
            status=JobStatus.PENDING,
            max_retries=opts.get("retries", DEFAULT_RETRIES),
            run_at=run_at,
            backoff=None if backoff is None else backoff.to_json(),
            created_at=now,
            updated_at=now,
            unique_key=opts.get("unique_key"),
            unique_for=opts.get("unique_for"),
            tags=list(opts.get("tags", ())),
            meta=dict(opts.get("meta", {})),
            timeout=opts.get("timeout"),
        )

    def _encode_args(self, name: str, args: Any) -> bytes:
        """``args`` encoded, within ``max_payload`` and, when the handler of ``name`` is
        registered here, fitting its parameter's annotation: a worker would refuse what
        does not (``InvalidArguments``, a ``TypeError`` and ``ValueError``)."""
        encoded = codec.dumps(args)
        if self.max_payload is not None and len(encoded) > self.max_payload:
            raise ValueError(
                f"arguments of {name!r} encode to {len(encoded):,} bytes, over this queue's "
                f"limit of {self.max_payload:,} (Queue(max_payload=...) changes it)"
            )
        handler = self._handlers.get(name)
        if handler is not None and handler.checks_args:  # plain JSON params: nothing to do
            handler.check_args(encoded)
        return encoded

    def enqueue(self, name: str | Callable[..., Any], args: Any = None, **options: Any) -> str:
        """Enqueue a job; returns its id.

        Options: ``priority``, ``retries``, ``delay`` (timedelta or seconds), ``at``
        (datetime; naive means UTC), ``queue``, ``backoff``, and ``connection`` (a
        SQLAlchemy ``Connection`` whose transaction the insert joins). Bad input raises
        ``TypeError``/``ValueError`` before anything is written.
        """
        connection = options.pop("connection", None)
        job = self.build_job(name, args, options)
        return self._store([job], connection)[0]

    def enqueue_many(
        self,
        items: Iterable[tuple[Any, ...]],
        *,
        connection: sa.Connection | None = None,
    ) -> list[str]:
        """Enqueue ``(name, args)`` or ``(name, args, options)`` items all-or-nothing."""
        items = items if isinstance(items, Sequence) else list(items)
        now = self.clock.now()
        built = (self._item_job(p, item, now) for p, item in enumerate(items))
        storage = self.storage
        if (
            len(items) > 1
            and connection is None
            and not self.instruments.enqueue
            and not any(_unique(item) for item in items)
        ):
            # The storage draws jobs while it stores those before: building them and
            # storing them overlap. A bad item raises from inside, and nothing is stored.
            # The jobs are kept only for those told of them: thousands kept until the
            # last is stored would each be traced by the garbage collector's full passes.
            stored = Stored(keep=self.tells_of_jobs)
            try:
                ids = storage.enqueue_many(_told(built, stored))
            except Exception as exc:
                self._explain(exc)
                raise
            self.announce_stored(stored)
            return ids
        return self._store(list(built), connection)

    def _item_job(self, position: int, item: Any, now: datetime) -> Job:
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise ValueError(
                f"item {position} must be (name, args) or (name, args, options), got {item!r}"
            )
        options = item[2] if len(item) == 3 else {}
        if not isinstance(options, Mapping):
            raise ValueError(f"item {position}: options must be a dict, got {options!r}")
        if "connection" in options:
            raise ValueError("give connection to enqueue_many itself, not per item")
        name = self.resolve_name(item[0])
        return self._new_job(name, item[1], self._job_options(name, options), now)

    async def enqueue_async(
        self, name: str | Callable[..., Any], args: Any = None, **options: Any
    ) -> str:
        """``enqueue`` for asyncio code: the database work runs off the event loop."""
        connection = options.pop("connection", None)
        job = self.build_job(name, args, options)  # bad input raises here, in the caller
        [job_id] = await asyncio.to_thread(self._store, [job], connection)
        return job_id

    def _store(self, jobs: Sequence[Job], connection: sa.Connection | None) -> list[str]:
        """Store ``jobs``; their ids, where a job deduplicated by its ``unique_key`` has
        the id of the job holding the key (and was not stored, nor is announced)."""
        taker = self._local_taker(jobs, connection)
        try:
            if self.instruments.enqueue:
                with wrapped(self.instruments.enqueue, jobs):
                    ids, claimed = self._write(jobs, connection, taker)
            else:
                ids, claimed = self._write(jobs, connection, taker)
        except BaseException as exc:
            if taker is not None:
                taker.give_back_enqueued(jobs[0])
            self._explain(exc)
            raise
        if taker is not None and not claimed:  # its queue is paused: stored unclaimed
            taker.give_back_enqueued(jobs[0])
            taker = None
        stored = [job for job, job_id in zip(jobs, ids, strict=True) if job_id == job.id]
        if connection is not None:
            # The jobs exist once the caller's transaction commits, and never if it rolls
            # back: events, metrics and wake-ups wait for that.
            after_commit(connection, partial(self._announce, stored, None))
        elif stored:
            self._announce(stored, taker)
        return ids

    def announce(self, jobs: Sequence[Job]) -> None:
        """Jobs stored and committed outside ``enqueue`` (a parent's children): wake this
        process's workers for them, fire the enqueue hooks and publish ``JobEnqueued``."""
        self._announce(jobs, None)

    @property
    def tells_of_jobs(self) -> bool:
        """Whether stored jobs are handed to anyone (enqueue hooks, event subscribers);
        if not, ``announce_stored`` needs only where they wait (``Stored(keep=False)``)."""
        return self.hooks.has_enqueued or self.bus.has_subscribers

    def announce_stored(self, stored: Stored) -> None:
        """``announce`` of the jobs ``stored`` saw stored (those it kept, if any)."""
        if stored.jobs:
            self._announce(stored.jobs, None)
        else:
            self._wake_workers(stored)

    def _explain(self, error: BaseException) -> None:
        """Raise a clearer error than ``error`` when a write failed because the database
        was never migrated (a queue made from a storage object does not migrate it)."""
        if clearer := self._storage.schema_error(error):
            raise clearer from error

    def _announce(self, jobs: Sequence[Job], taker: LocalWorker | None) -> None:
        """After stored jobs commit: wake this process's workers and publish events."""
        if taker is None and self._workers:
            stored = Stored(keep=False)
            for job in jobs:
                stored.add(job)
            self._wake_workers(stored)
        self.hooks.fire_enqueued(jobs)
        if self.bus.has_subscribers:
            for job in jobs:
                self.bus.publish(JobEnqueued(job))
        if taker is not None:  # after JobEnqueued, which must come before JobStarted
            taker.start_enqueued(jobs[0])

    def _wake_workers(self, stored: Stored) -> None:
        """Wake this process's workers for the queues of jobs ``stored`` saw stored."""
        now = self.clock.now()
        for worker in list(self._workers):
            worker.wake(stored.queues_due(now))
            later = stored.queues_later(now)
            if later:
                worker.wake_at(later)

    def _local_taker(
        self, jobs: Sequence[Job], connection: sa.Connection | None
    ) -> LocalWorker | None:
        """A worker of this process with a free slot for a single due job, reserved.

        The job is then stored already claimed by it and starts at once: one commit
        instead of an insert, a wake-up and a claim. (Not inside a caller's transaction,
        which decides when the job exists.)
        """
        if connection is not None or len(jobs) != 1 or jobs[0].run_at is not None:
            return None
        if jobs[0].unique_key is not None:  # the storage decides whether it is stored
            return None
        if not self._workers:
            return None
        for worker in list(self._workers):
            if worker.take_enqueued(jobs[0]):
                return worker
        return None

    def _write(
        self, jobs: Sequence[Job], connection: sa.Connection | None, taker: LocalWorker | None
    ) -> tuple[list[str], bool]:
        """Store ``jobs``: their ids (see ``_store``), and whether ``taker`` got the single
        one claimed."""
        storage = self.storage
        if taker is not None:
            claimed = storage.enqueue_claimed(jobs[0], taker.id, lock_timeout=taker.lock_timeout)
            return [jobs[0].id], claimed
        if connection is not None or len(jobs) > 1:
            return storage.enqueue_many(jobs, connection=connection), False
        return [storage.enqueue(job) for job in jobs], False

    # -- job control --------------------------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        """Cancel a job with all its unfinished descendants, in one transaction.

        True if the job became ``cancelled``; False if it had finished already (its
        unfinished descendants are cancelled all the same). A running handler is told
        to stop (see ``jobs.Cancelled``); whatever its run returns after, the job stays
        cancelled. Raises ``JobNotFound`` (a ``LookupError``) for an unknown id.
        """
        cancelled = self._control(lambda: self.storage.cancel(job_id))
        if cancelled is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        running = {job.id for job in cancelled if job.status is JobStatus.RUNNING}
        if running:
            for worker in list(self._workers):
                worker.cancel_runs(running)
        now = self.clock.now()
        for job in cancelled:
            job.status, job.finished_at, job.last_error = JobStatus.CANCELLED, now, "cancelled"
            job.locked_by = job.paused_from = job.wait_until = job.waiting_for = None
            self.hooks.fire_cancel(job)
            if self.bus.has_subscribers:
                self.bus.publish(JobCancelled(job))
        return any(job.id == job_id for job in cancelled)

    def pause(self, job_id: str) -> bool:
        """Hold a job: one that is not running is not claimed until ``resume``; a running
        or waiting one becomes ``paused`` instead of running again (a retry, a wake-up).

        True if the job is paused from now on; False if it was paused already or has
        finished. ``JobNotFound`` for an unknown id. Lasts across restarts (it is stored).
        """
        if self._control(lambda: self.storage.pause(job_id)):
            if self.bus.has_subscribers and (job := self.get_job(job_id)) is not None:
                self.bus.publish(JobPaused(job))
            return True
        self._require_job(job_id)
        return False

    def resume(self, job_id: str) -> bool:
        """Withdraw ``pause``: the job gets back the status it had (and is claimed at once
        if due). False if it was not paused; ``JobNotFound`` for an unknown id."""
        if self._control(lambda: self.storage.resume(job_id)):
            return True
        self._require_job(job_id)
        return False

    def pause_queue(self, queue: str) -> None:
        """Stop every worker of every process from claiming jobs of ``queue``; running
        jobs finish. Stored, so it lasts until ``resume_queue``, across restarts."""
        name = check_queue_name(queue)
        self._control(lambda: self.storage.pause_queue(name))

    def resume_queue(self, queue: str) -> None:
        """Let workers claim from ``queue`` again (those idle start at once)."""
        name = check_queue_name(queue)
        self._control(lambda: self.storage.resume_queue(name))

    def paused_queues(self) -> dict[str, datetime]:
        """The paused queues, with when each was paused (UTC)."""
        return self._control(self.storage.paused_queues)

    def _control(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            self._explain(exc)
            raise

    def _require_job(self, job_id: str) -> None:
        if self.get_job(job_id) is None:
            raise JobNotFound(f"no job with id {job_id!r}")

    # -- signals ------------------------------------------------------------------------

    def signal(self, job_id: str, name: str, payload: Any = None) -> None:
        """Send the signal ``name`` with ``payload`` (JSON) to job ``job_id``.

        Durable: it is kept until the job consumes it (``jobs.wait_for_signal``,
        ``drain_signals``), oldest first per (job, name); a job waiting for it resumes at
        once. A signal sent before the job waits is kept for it; one sent to a finished
        job is kept and never consumed. Raises ``JobNotFound`` (a ``LookupError``) for an
        unknown id and ``ValueError`` for an empty name, one starting with ``_``, or a
        payload over ``max_payload`` (``TypeError`` for one JSON cannot carry).
        """
        check_signal_name(name)
        encoded = codec.dumps(payload)
        if self.max_payload is not None and len(encoded) > self.max_payload:
            raise ValueError(
                f"the payload of signal {name!r} encodes to {len(encoded):,} bytes, over this"
                f" queue's limit of {self.max_payload:,}"
            )
        takers: list[tuple[LocalWorker, Job]] = []
        try:
            found, woken, run = self.storage.signal_claiming(
                job_id, name, encoded, partial(self._reserve_resume, takers)
            )
        except BaseException as exc:
            for worker, probe in takers:
                worker.give_back_enqueued(probe)
            self._explain(exc)
            raise
        if not found:
            raise JobNotFound(f"no job with id {job_id!r}")
        if takers:
            worker, probe = takers[0]
            if run is not None:  # claimed for it with the wake-up: no claim, no wait
                worker.start_enqueued(run)
                return
            worker.give_back_enqueued(probe)  # the job or its queue is paused
        if woken is not None:
            for worker in list(self._workers):  # the job is due now: run it here if free
                worker.wake((woken,))

    def _reserve_resume(
        self, takers: list[tuple[LocalWorker, Job]], queue: str, job_type: str
    ) -> tuple[str, float] | None:
        """A free slot of a worker of this process for the resume of a job of
        ``job_type`` in ``queue`` that a signal is waking, reserved (noted in ``takers``):
        the run is then claimed for it in the signal's transaction (see ``_local_taker``)."""
        probe = Job(type=job_type, queue=queue)
        for worker in list(self._workers):
            if worker.take_enqueued(probe):
                takers.append((worker, probe))
                return worker.id, worker.lock_timeout
        return None

    async def signal_async(self, job_id: str, name: str, payload: Any = None) -> None:
        """``signal`` for asyncio code: the database work runs off the event loop."""
        await asyncio.to_thread(self.signal, job_id, name, payload)

    # -- reads --------------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job | None:
        """The job with ``job_id``, or None."""
        return self.storage.get_job(job_id)

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait for job ``job_id``'s outcome and return its result, decoded into the
        handler's return annotation when the handler is registered here (plain JSON
        otherwise).

        Raises ``JobFailed`` (``.error`` holds the stored error and traceback) if it
        failed, ``JobCancelled`` if it was cancelled, ``TimeoutError`` if it has no
        outcome after ``timeout`` seconds (None: wait for ever), ``JobNotFound`` for an
        unknown id. Outcomes stored by this
        queue's workers wake the waiter at once, as do outcomes stored by any process on
        PostgreSQL (a notification) and SQLite (a watch on the file); on MySQL those
        are read within 0.1 s.
        """
        limit = results.check_timeout(timeout)
        with self.events(maxsize=64) as stream:
            return results.wait_sync(
                self.storage.get_job,
                self.storage.watch_outcome,
                stream,
                job_id,
                limit,
                self._decoder,
            )

    async def result_async(self, job_id: str, timeout: float | None = None) -> Any:
        """``result`` for async code: waits without blocking the event loop."""
        limit = results.check_timeout(timeout)
        with self.events(maxsize=64) as stream:
            return await results.wait_async(
                self.storage.get_job,
                self.storage.watch_outcome,
                stream,
                job_id,
                limit,
                self._decoder,
            )

    def explain(self, job_id: str) -> Explanation:
        """Why job ``job_id`` is (not) running: the first reason that holds, as a code,
        a sentence and the facts behind it (see ``jobs.Explanation``). Caps and rate
        limits are those of the handlers registered in this queue."""
        return self._control(
            lambda: explain_job(self.storage, job_id, self._limits, now=self.clock.now())
        )

    def _limits(self, job_type: str) -> Limits | None:
        handler = self.handler(job_type)
        return None if handler is None else handler.limits

    def _decoder(self, job: Job) -> Callable[[bytes], Any] | None:
        """How to decode ``job``'s result: its handler's, if registered here."""
        handler = self.handler(job.type)
        return None if handler is None else handler.decode_result

    # -- operations ---------------------------------------------------------------------

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        type: str | None = None,
        queue: str | None = None,
        tag: str | None = None,
        meta: Mapping[str, Any] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        after: Cursor | str | None = None,
    ) -> JobPage:
        """Up to ``limit`` (at most 1000) jobs matching every filter given, newest first.

        ``tag``: jobs with that tag; ``meta``: jobs whose meta has each of those entries
        (string, integer or boolean values); ``created_after`` (inclusive) and
        ``created_before`` (exclusive) bound the creation time. For the following page
        pass the page's ``next`` (a ``Cursor``, or its ``token()``) as ``after``: pages
        are stable while jobs are added.
        """
        admin = self.storage.admin()
        return self._control(
            lambda: admin.jobs_page(
                status=ops.status(status),
                job_type=type,
                queue=queue,
                tag=tag,
                meta=ops.meta_filter(meta),
                created_after=created_after,
                created_before=created_before,
                before=ops.cursor(after),
                limit=ops.check_limit(limit),
            )
        )

    def retry(self, job_id: str) -> bool:
        """Put a failed (or cancelled) job back as ``pending``, due now, with a fresh
        retry budget; its attempt history stays. True if it was put back, False if it
        was in another status; ``JobNotFound`` for an unknown id."""
        job = self._control(lambda: self.storage.admin().retry(job_id))
        if job is None:
            self._require_job(job_id)
            return False
        self._wake({job.queue})
        return True

    def retry_failed(
        self,
        *,
        type: str | None = None,
        queue: str | None = None,
        since: datetime | timedelta | None = None,
    ) -> int:
        """Retry every failed job of ``type`` and ``queue`` that failed at or after
        ``since`` (a time, or a timedelta before now), in batches of short transactions;
        returns how many were put back."""
        start = ops.since_time(since, self.clock.now())
        admin = self.storage.admin()
        count, queues = self._control(
            lambda: admin.retry_failed(job_type=type, queue=queue, since=start)
        )
        self._wake(queues)
        return count

    def prune(
        self,
        older_than: timedelta = timedelta(days=7),
        statuses: Iterable[JobStatus | str] | str = ("completed",),
    ) -> int:
        """Delete jobs of ``statuses`` (completed, failed, cancelled) that finished more
        than ``older_than`` ago, with their checkpoints, signals, attempt history and
        labels, in small batches; returns how many jobs. A finished child whose parent
        has not finished is kept."""
        admin = self.storage.admin()
        return self._control(lambda: admin.prune(older_than, statuses))

    def _wake(self, queues: set[str]) -> None:
        for worker in list(self._workers):  # due now: run here at once if free
            worker.wake(sorted(queues))

    # -- schedules ----------------------------------------------------------------------

    def schedule(self, name: str, schedule: Schedule, args: Any = None, **options: Any) -> None:
        """Enqueue a job of type ``name`` at each fire time of ``schedule``.

        Needs a worker running with ``scheduler=True``. ``schedule`` must be a
        ``Schedule`` (``jobs.every``, ``daily``, ``weekly``, ``cron``): anything else
        raises ``TypeError``.
        """
        from .schedules import Schedule  # a peer module: imported when used

        if not isinstance(schedule, Schedule):
            raise TypeError(not_a_schedule(name, schedule))
        check_job_name(name)
        if name in self.schedules:
            raise ValueError(f"a schedule named {name!r} is already registered")
        self._encode_args(name, args)
        checked = check_options(options, _JOB_DEFAULTS, f"schedule({name!r})")
        self.schedules[name] = (schedule, args, checked)

    # -- workers, hooks, events ---------------------------------------------------------

    def worker(
        self,
        queues: Mapping[str, int] | Sequence[str] | None = None,
        *,
        scheduler: bool = False,
        lock_timeout: timedelta | float = 30,
        poll_interval: timedelta | float = 1.0,
        worker_id: str | None = None,
        shutdown_timeout: timedelta | float = 30,
        retention: Mapping[str, timedelta] | None = None,
    ) -> Worker:
        """A worker for ``queues`` (name -> concurrency). Without them it serves
        ``"default"`` and every queue its handlers and schedules name, 10 at a time each.
        Stopping lets running jobs finish for up to ``shutdown_timeout`` seconds.
        ``retention`` (finished status -> how long to keep) has the worker prune older
        finished jobs as it runs; none by default."""
        from .worker import Worker  # the worker depends on the queue, not the reverse

        return Worker(
            self,
            queues,
            scheduler=scheduler,
            lock_timeout=lock_timeout,
            poll_interval=poll_interval,
            worker_id=worker_id,
            shutdown_timeout=shutdown_timeout,
            retention=retention,
        )

    def wake_workers_at(self, queue: str, when: datetime) -> None:
        """Have this process's workers look for jobs of ``queue`` at ``when`` (such as
        the deadline of a job's wait), so that whichever is free runs it then."""
        for worker in list(self._workers):
            worker.wake_at({queue: when})

    def attach(self, worker: LocalWorker) -> None:
        """Let a running worker of this queue be woken by this process's enqueues."""
        self._workers.add(worker)

    def detach(self, worker: LocalWorker) -> None:
        """Stop waking ``worker``."""
        self._workers.discard(worker)

    def on_job_start(self, fn: F) -> F:
        """Call ``fn(job)`` when a job starts running."""
        self.hooks.on_job_start(fn)
        return fn

    def on_job_complete(self, fn: F) -> F:
        """Call ``fn(job)`` after a job's completion is stored."""
        self.hooks.on_job_complete(fn)
        return fn

    def on_job_fail(self, fn: F) -> F:
        """Call ``fn(job, error)`` after a job failed permanently."""
        self.hooks.on_job_fail(fn)
        return fn

    def on_retry(self, fn: F) -> F:
        """Call ``fn(job, error)`` after a failed run was scheduled to retry."""
        self.hooks.on_retry(fn)
        return fn

    def on_cancel(self, fn: F) -> F:
        """Call ``fn(job)`` for each job ``cancel`` cancels (in the cancelling process)."""
        self.hooks.on_cancel(fn)
        return fn

    def instrument(self, instrument: T) -> T:
        """Register an instrument (metrics, tracing or your own) on this queue.

        It may have any of ``enqueue(jobs)``, ``job_run(job)`` and
        ``step_run(job, name, index)``, each returning a context manager that wraps
        storing new jobs, a handler's run and a durable step (see ``instrument.py``).
        """
        self.instruments.add(instrument)
        return instrument

    def events(self, maxsize: int = 1000) -> EventStream:
        """Subscribe to what this queue's workers do (a bounded, lossy stream)."""
        return self.bus.subscribe(maxsize)


def _unique(item: Any) -> bool:
    """Whether an ``enqueue_many`` item asks for a unique key (malformed ones: no)."""
    return (
        isinstance(item, tuple)
        and len(item) == 3
        and isinstance(item[2], Mapping)
        and item[2].get("unique_key") is not None
    )


def _told(jobs: Iterable[Job], stored: Stored) -> Iterator[Job]:
    """``jobs``, each also added to ``stored`` as it is drawn."""
    stored.clear()  # drawn again if the storage retries
    for job in jobs:
        stored.add(job)
        yield job


_POSITIONAL = [f.name for f in dataclasses.fields(Job) if not f.kw_only]
_CREATED, _UPDATED = _POSITIONAL.index("created_at"), _POSITIONAL.index("updated_at")
_TAGS, _META = _POSITIONAL.index("tags"), _POSITIONAL.index("meta")


def _fields_of(job: Job) -> list[Any]:
    """The values of ``job``'s positional fields, in order (a template for ``_copy_of``)."""
    return [getattr(job, name) for name in _POSITIONAL]


def _copy_of(template: list[Any], now: datetime) -> Job:
    """A new job with the fields of ``template`` (``_fields_of`` a type's job with its
    defaults), created ``now``: positional arguments cost the least."""
    values = template.copy()
    values[_CREATED] = values[_UPDATED] = now
    values[_TAGS], values[_META] = list(values[_TAGS]), dict(values[_META])
    return Job(*values)


class Stored:
    """What is told of jobs as they are stored: the jobs themselves when ``keep``
    (someone is handed them), else only each queue's earliest ``run_at``."""

    def __init__(self, *, keep: bool) -> None:
        self._keep = keep
        self.jobs: list[Job] = []
        self._earliest: dict[str, datetime | None] = {}  # None: due at once

    def clear(self) -> None:
        """Forget what was seen (a retried transaction stores the jobs again)."""
        self.jobs.clear()
        self._earliest.clear()

    def add(self, job: Job) -> None:
        if self._keep:
            self.jobs.append(job)
        at, seen = job.run_at, self._earliest.get(job.queue, job.run_at)
        if job.queue not in self._earliest or at is None or (seen is not None and at < seen):
            self._earliest[job.queue] = at

    def queues_due(self, now: datetime) -> set[str]:
        return {q for q, at in self._earliest.items() if at is None or at <= now}

    def queues_later(self, now: datetime) -> dict[str, datetime]:
        return {q: at for q, at in self._earliest.items() if at is not None and at > now}
