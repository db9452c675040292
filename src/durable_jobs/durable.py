"""Durable calls: workflow steps whose outcomes are checkpointed and replayed.

``call()`` finds the running job through the context variable, so this module needs
neither the worker nor the queue module.
"""

from __future__ import annotations

import asyncio
import difflib
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from . import codec, context
from .errors import NondeterminismError, NoRetry, StaleJobError
from .events import CheckpointSaved
from .handler import Handler, InvalidArguments
from .instrument import wrapped
from .job import Checkpoint, Job, JobStatus
from .options import check_options
from .retry import DEFAULT_BACKOFF, Backoff
from .storage import retry_transient

__all__ = [
    "InvalidCall",
    "InvalidCallArguments",
    "Position",
    "UnknownStep",
    "call",
    "call_async",
    "checkpoint_at",
    "checkpoint_at_async",
    "record",
    "remember",
    "take_position",
]

_CALL_OPTIONS = frozenset({"retries", "backoff"})
# Errors of nested calls that a step's retries in place must not catch: a run that lost
# its lock must stop at once, and a diverged replay diverges again on every attempt.
_NEVER_RETRIED = (StaleJobError, NondeterminismError)

# The path of the step whose body is running ("" in the job itself): nested calls are
# numbered within their step, so they never shift the numbering around them. A context
# variable rather than a stack, so concurrent async steps each see their own path.
_scope: ContextVar[str] = ContextVar("durable_jobs_scope", default="")


class InvalidCall(NoRetry):
    """A durable call that cannot run as written: no handler is registered for it, or
    its arguments or options do not fit. A programming error, not a passing failure, so
    the job fails at once instead of retrying (and the error is not checkpointed: once
    the code is fixed, a retried job makes the call afresh).
    """


class UnknownStep(InvalidCall, LookupError):
    """No handler is registered (in the worker running the job) for what a call names."""


class InvalidCallArguments(InvalidCall, TypeError, ValueError):
    """A call's arguments do not fit its handler's annotation or cannot be encoded as
    JSON, or its options are unknown or out of range."""


@dataclass
class _Replay:
    """One run's view of its job's checkpoints and the next call index per scope.

    A call takes its index when it is made, under a lock and before any I/O, so calls
    made at once (threads, ``asyncio.gather``) get distinct indexes in the order they
    were made. The checkpoints are read afterwards, once per run, and merged in.
    """

    checkpoints: dict[tuple[str, int], Checkpoint] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    loaded: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    load_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def next_index(self, scope: str) -> int:
        with self.lock:
            index = self.counters.get(scope, 0)
            self.counters[scope] = index + 1
            return index

    def restart(self, scope: str) -> None:
        """Number the calls in ``scope`` from 0 again (a step's next attempt in place)."""
        with self.lock:
            self.counters.pop(scope, None)

    def merge(self, loaded: Iterable[Checkpoint]) -> None:
        """Add checkpoints read from storage; those this run recorded meanwhile stay."""
        with self.lock:
            for cp in loaded:
                self.checkpoints.setdefault((cp.scope, cp.call_index), cp)
            self.loaded = True

    def get(self, scope: str, index: int) -> Checkpoint | None:
        with self.lock:
            return self.checkpoints.get((scope, index))


@dataclass(frozen=True)
class _Step:
    """A call about to run or replay."""

    ctx: context.JobContext
    replay: _Replay
    handler: Handler
    scope: str
    index: int
    args: bytes
    retries: int
    backoff: Backoff

    @property
    def path(self) -> str:
        return f"{self.scope}.{self.index}" if self.scope else str(self.index)


def _replay_state(ctx: context.JobContext) -> _Replay:
    """This run's replay state with the job's checkpoints read (once per run)."""
    replay = _replay_of(ctx)
    if not replay.loaded:
        with replay.load_lock:  # concurrent first calls wait for one read
            if not replay.loaded:
                replay.merge(_read_checkpoints(ctx))
    return replay


def _replay_of(ctx: context.JobContext) -> _Replay:
    """This run's replay state, created on first use without I/O."""
    replay = ctx.durable.get("replay")
    if replay is None:
        replay = ctx.durable.setdefault("replay", _Replay())  # atomic: one per run
    assert isinstance(replay, _Replay)
    return replay


def _prepare(target: str | Callable[..., Any], args: Any, options: dict[str, Any]) -> _Step:
    """Check a call and take its index, at once and without I/O (see ``_Replay``).

    What cannot run as written raises ``InvalidCall`` before the call takes an index; a
    run told to stop raises ``Cancelled`` instead of calling.
    """
    ctx = context.active_context()
    handler = _handler_for(ctx, target)
    where = f"durable call of {handler.name!r}"
    try:
        opts = check_options(options, _CALL_OPTIONS, where)  # like enqueue's
    except ValueError as exc:
        raise InvalidCallArguments(str(exc)) from exc
    try:
        encoded = codec.dumps(args)
    except TypeError as exc:
        raise InvalidCallArguments(f"{where}: {exc}") from exc
    replay = _replay_of(ctx)
    scope = _scope.get()
    index = replay.next_index(scope)
    backoff = opts.get("backoff") or handler.defaults.get("backoff") or DEFAULT_BACKOFF
    return _Step(ctx, replay, handler, scope, index, encoded, opts.get("retries", 0), backoff)


def _handler_for(ctx: context.JobContext, target: str | Callable[..., Any]) -> Handler:
    """The handler a call names, by job type or as the registered function (resolved
    as ``enqueue`` resolves it), or ``InvalidCall`` saying why there is none."""
    queue = ctx.queue
    if isinstance(target, str):
        name = target
    else:
        try:
            name = queue.resolve_name(target)
        except ValueError:
            what = getattr(target, "__qualname__", None) or repr(target)
            raise UnknownStep(
                f"durable call of {what}: it is not a handler registered with this queue; "
                "register it (@queue.job() or queue.register) or call it by its job type"
            ) from None
    handler = queue.handler(name)
    if handler is None:
        close = difflib.get_close_matches(name, queue.job_types, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise UnknownStep(
            f"durable call of {name!r}: no handler is registered under that job type in "
            f"this worker{hint}; register it on the queue that runs this workflow"
        )
    return handler


def _note(step: _Step, error: BaseException, how: str = "raised this") -> None:
    """Say on ``error`` which step it came from: the job's traceback then names it."""
    note = f"durable call {step.path} ({step.handler.name!r}) {how}"
    try:
        if note not in getattr(error, "__notes__", ()):  # the same error object re-raised
            error.add_note(note)
    except Exception:  # an error whose __notes__ was replaced by something odd
        pass  # never hide the error itself behind a failure to annotate it


def _replayed(step: _Step, cp: Checkpoint) -> Any:
    if cp.call_type != step.handler.name:
        raise NondeterminismError(
            f"durable call {step.path} of job {step.ctx.job.id} is {step.handler.name!r} on "
            f"this run but was {cp.call_type!r} when it was checkpointed; the workflow's "
            "calls must happen in the same order on every run"
        )
    if cp.error is not None:
        error = NoRetry(cp.error)
        _note(step, error, "raised this on an earlier run (replayed from its checkpoint)")
        raise error
    return step.handler.decode_result(cp.result or b"null")


def _record(step: _Step, result: bytes | None, error: str | None) -> None:
    position = Position(step.ctx, step.replay, step.scope, step.index)
    _store(position, step.handler.name, result, error)


def _store(pos: Position, call_type: str, result: bytes | None, error: str | None) -> None:
    """Save a checkpoint at ``pos``, fenced to the run: ``StaleJobError`` if it lost
    its lock."""
    job = pos.ctx.job
    cp = Checkpoint(
        job_id=job.id,
        call_index=pos.index,
        call_type=call_type,
        result=result,
        error=error,
        scope=pos.scope,
    )
    stored = retry_transient(
        lambda: _save_checkpoint(pos.ctx, cp),
        within=pos.ctx.lock_timeout,
        what=f"saving checkpoint {pos.path} of job {job.id}",
    )
    if not stored:
        raise context.fenced_out(
            pos.ctx, f"job {job.id} lost its lock; step {pos.path} was not recorded"
        )
    remember(pos, cp)


def remember(pos: Position, cp: Checkpoint) -> None:
    """Take ``cp``, just stored at ``pos``, into this run's replay state, and report it."""
    pos.replay.checkpoints[(pos.scope, pos.index)] = cp
    bus = pos.ctx.queue.bus
    if bus.has_subscribers:
        bus.publish(CheckpointSaved(pos.ctx.job, cp))


# -- positions of other checkpointed steps (the waiting functions of ``waiting.py``) ---


@dataclass(frozen=True)
class Position:
    """A checkpointed step's place among its job's calls: the next call index of the
    current scope, taken like a call's (at once, without I/O)."""

    ctx: context.JobContext
    replay: _Replay
    scope: str
    index: int

    @property
    def path(self) -> str:
        return f"{self.scope}.{self.index}" if self.scope else str(self.index)


def take_position() -> Position:
    """The next call index of the running job's current scope (``NotInJobError`` outside
    a job; ``Cancelled`` once the run is told to stop): a waiting function takes its
    number as ``call()`` does."""
    ctx = context.active_context()
    replay = _replay_of(ctx)
    scope = _scope.get()
    return Position(ctx, replay, scope, replay.next_index(scope))


def checkpoint_at(pos: Position) -> Checkpoint | None:
    """The checkpoint an earlier run saved at ``pos``, if any (reads them once per run)."""
    return _replay_state(pos.ctx).get(pos.scope, pos.index)


async def checkpoint_at_async(pos: Position) -> Checkpoint | None:
    """``checkpoint_at`` without blocking the event loop."""
    if not pos.replay.loaded:
        await asyncio.to_thread(_replay_state, pos.ctx)
    return pos.replay.get(pos.scope, pos.index)


def record(pos: Position, call_type: str, result: bytes) -> None:
    """Save what the step at ``pos`` decided, as ``call_type`` (fenced: ``StaleJobError``
    when the run lost its lock). A blocking write: async code runs it in a thread."""
    _store(pos, call_type, result, None)


def _save_checkpoint(ctx: context.JobContext, cp: Checkpoint) -> bool:
    return ctx.queue.storage.save_checkpoint(cp, worker_id=ctx.worker_id, fence=ctx.job.fence)


def _read_checkpoints(ctx: context.JobContext) -> list[Checkpoint]:
    """The job's checkpoints, read while this run still held the job.

    A run that lost its lock before it got here (its worker frozen past the lock
    timeout) may find none: another run finished the job, and finishing drops them. It
    would then run every step again. The lock is looked at after the read: held then,
    no other run can have finished the job before it.
    """
    storage = ctx.queue.storage

    def read() -> tuple[list[Checkpoint], Job | None]:
        found = storage.get_checkpoints(ctx.job.id)
        return found, storage.get_job(ctx.job.id)

    # Idempotent reads and fenced writes: a brief storage error (shorter than the lock
    # timeout, after which the run may have been taken back) is waited out in place
    # rather than failing the run and costing it an attempt.
    found, job = retry_transient(
        read, within=ctx.lock_timeout, what=f"reading the checkpoints of job {ctx.job.id}"
    )
    held = (
        job is not None
        and job.status is JobStatus.RUNNING
        and job.locked_by == ctx.worker_id
        and job.fence == ctx.job.fence
    )
    if not held:
        raise context.fenced_out(
            ctx, f"job {ctx.job.id} lost its lock before its steps were replayed"
        )
    return found


def _succeeded(step: _Step, value: Any) -> Any:
    result = codec.dumps(value)
    _record(step, result, None)
    # Decoding what was stored gives the same value on the first run and on replays.
    return step.handler.decode_result(result)


def _arguments(step: _Step) -> tuple[Any, ...]:
    """The step's argument decoded into its handler's annotation, as a worker decodes a
    job's; arguments that do not fit raise ``InvalidCall`` (retrying cannot help)."""
    if not step.handler.takes_arg:
        return ()
    try:
        return (step.handler.check_args(step.args),)
    except InvalidArguments as exc:
        raise InvalidCallArguments(f"durable call {step.path}: {exc}") from exc


def call(name: str | Callable[..., Any], args: Any = None, **options: Any) -> Any:
    """Run the registered handler ``name`` as a checkpointed step of the current job.

    ``name`` is a job type or the registered function itself, as for ``enqueue``.

    On a later run of the job, a step that already has a checkpoint returns its saved
    result (decoded into the handler's return annotation) without running. A ``NoRetry``
    from the step is checkpointed and raised again on replay; other errors are retried
    in place up to ``retries`` (default 0, waiting by ``backoff``) and then propagate,
    uncheckpointed, so the job's own retry runs the step again.

    Raises ``NotInJobError`` outside a handler and ``NondeterminismError`` when the
    replayed call names a different handler than its checkpoint. ``StaleJobError`` and
    ``NondeterminismError`` from nested calls are never retried in place. A call that
    cannot run as written raises ``InvalidCall``, a ``NoRetry``, so the job fails
    without retries: ``UnknownStep`` (a ``LookupError``) when no handler is registered
    for ``name``, ``InvalidCallArguments`` (a ``TypeError`` and ``ValueError``) for
    arguments that do not fit the handler's annotation and for bad options (neither is
    checkpointed). An error that leaves the step gets a note naming the step (its call
    index and handler), which the job's stored traceback shows.
    """
    step = _prepare(name, args, options)
    cp = _replay_state(step.ctx).get(step.scope, step.index)
    if cp is not None:
        return _replayed(step, cp)
    for attempt in range(step.retries + 1):
        arguments = _arguments(step)  # InvalidCall: not the step's failure, not retried
        token = _scope.set(step.path)
        try:
            step.replay.restart(step.path)  # nested calls renumber per attempt
            wrappers = step.ctx.queue.instruments.step_run
            if wrappers:
                with wrapped(wrappers, step.ctx.job, step.handler.name, step.index):
                    value = _run_sync(step.handler.fn, arguments)
            else:
                value = _run_sync(step.handler.fn, arguments)
        except InvalidCall as exc:  # a nested call's programming error: not checkpointed
            _note(step, exc)
            raise
        except NoRetry as exc:
            _record(step, None, exc.message)
            _note(step, exc)
            raise
        except _NEVER_RETRIED:  # the run lost its lock, or diverged: retrying cannot help
            raise
        except Exception as exc:
            if attempt == step.retries:
                _note(step, exc)
                raise
            time.sleep(step.backoff.delay(attempt + 1).total_seconds())
        else:
            return _succeeded(step, value)
        finally:
            _scope.reset(token)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _run_sync(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    value = fn(*args)
    if not asyncio.iscoroutine(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(value)  # a sync job calling an async step
    value.close()
    raise RuntimeError(
        "an async step was called with call() inside a running event loop; "
        "use 'await jobs.call_async(...)' there"
    )


def call_async(
    name: str | Callable[..., Any], args: Any = None, **options: Any
) -> Coroutine[Any, Any, Any]:
    """``call()`` for async handlers: ``await jobs.call_async(name, args)``.

    The call takes its index when ``call_async()`` is called, before anything is
    awaited, so ``asyncio.gather(call_async(a), call_async(b))`` numbers ``a`` then
    ``b`` on every run, whichever finishes first. Sync steps and storage reads and
    writes run in threads so they never block the event loop.
    """
    return _call_async(_prepare(name, args, options))


async def _call_async(step: _Step) -> Any:
    if not step.replay.loaded:
        await asyncio.to_thread(_replay_state, step.ctx)
    cp = step.replay.get(step.scope, step.index)
    if cp is not None:
        return _replayed(step, cp)
    storage_call = asyncio.to_thread
    for attempt in range(step.retries + 1):
        arguments = _arguments(step)
        token = _scope.set(step.path)
        try:
            step.replay.restart(step.path)
            wrappers = step.ctx.queue.instruments.step_run
            if wrappers:
                with wrapped(wrappers, step.ctx.job, step.handler.name, step.index):
                    value = await _run_async(step.handler, arguments)
            else:
                value = await _run_async(step.handler, arguments)
        except InvalidCall as exc:
            _note(step, exc)
            raise
        except NoRetry as exc:
            await storage_call(_record, step, None, exc.message)
            _note(step, exc)
            raise
        except _NEVER_RETRIED:
            raise
        except Exception as exc:
            if attempt == step.retries:
                _note(step, exc)
                raise
            await asyncio.sleep(step.backoff.delay(attempt + 1).total_seconds())
        else:
            return await storage_call(_succeeded, step, value)
        finally:
            _scope.reset(token)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def _run_async(handler: Handler, args: tuple[Any, ...]) -> Any:
    if handler.is_async:
        coro: Awaitable[Any] = handler.fn(*args)
        return await coro
    return await asyncio.to_thread(handler.fn, *args)
