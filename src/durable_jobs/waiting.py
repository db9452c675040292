"""Workflows that wait: durable sleep, signals, and progress reports.

A waiting function suspends its job instead of holding a worker slot: it raises
``Suspend`` (a ``BaseException``, which ``except Exception`` and ``call()``'s retries in
place let pass), the handler unwinds, and the worker stores the job ``waiting`` with its
deadline. Once the deadline has come a worker runs the handler again from the start:
its calls replay from their checkpoints, and so does the wait, which then returns.

Each waiting function takes the next call index, as ``call()`` does, and checkpoints
what it decided (a sleep: its deadline, fixed on the first run; a signal wait: the
signal it consumed, or its timeout), so replays are deterministic: a replay that finds
another kind of step at that index raises ``NondeterminismError``.

Signals are stored in their own table, FIFO per (job, name). An observation (wait,
peek, drain) reads, consumes and checkpoints in one transaction, fenced by the run, so
no signal is consumed twice or without its checkpoint. A job that finds no signal
suspends; its suspension and any signal sent meanwhile serialise on the job's row (see
``SQLStorage.suspend``), so a signal that arrives between the look and the suspension
wakes the job at once instead of being missed.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from . import codec, context, durable
from .durable import InvalidCallArguments
from .errors import NondeterminismError, SignalTimeout, Suspend
from .job import Checkpoint, signal_wait
from .storage import retry_transient

__all__ = [
    "DRAIN_SIGNALS",
    "PEEK_SIGNAL",
    "SIGNAL_DEADLINE",
    "SLEEP",
    "WAIT_FOR_SIGNAL",
    "check_signal_name",
    "drain_signals",
    "drain_signals_async",
    "peek_signal",
    "peek_signal_async",
    "set_progress",
    "set_progress_async",
    "sleep",
    "sleep_async",
    "sleep_until",
    "sleep_until_async",
    "wait_for_signal",
    "wait_for_signal_async",
]

#: The ``call_type`` of a sleep's checkpoint (what ``sdj jobs show`` lists as its step).
SLEEP = "jobs.sleep"
#: The ``call_type`` of the checkpoints of signal observations.
WAIT_FOR_SIGNAL = "jobs.wait_for_signal"
PEEK_SIGNAL = "jobs.peek_signal"
DRAIN_SIGNALS = "jobs.drain_signals"
#: The deadline of a ``wait_for_signal`` with a timeout, fixed on the first run: saved
#: at call 0 of the wait's own scope (``"<its path>.0"``), since a checkpoint is never
#: replaced and the wait's own position takes what it finally observed.
SIGNAL_DEADLINE = "jobs.signal_deadline"
#: The most signals one ``drain_signals`` takes.
MAX_DRAIN = 10_000

Deadline = Callable[[datetime], datetime]


# -- sleep ------------------------------------------------------------------------------


def sleep(duration: timedelta | float) -> None:
    """Suspend the job for ``duration`` (a timedelta or seconds), freeing its slot.

    The deadline is fixed (and checkpointed) on the first run: a replay waits for the
    same moment, and returns at once once it has passed. A duration that is not a
    timedelta or a finite number of seconds >= 0 raises ``InvalidCallArguments``;
    outside a job, ``NotInJobError``.
    """
    context.current_context()
    _sleep(durable.take_position(), _after(duration, "jobs.sleep: duration"))


def sleep_until(when: datetime) -> None:
    """Suspend the job until ``when`` (naive means UTC); a past time returns at once.

    Checkpointed like ``sleep`` (the first run's deadline stands on replay).
    """
    context.current_context()
    _sleep(durable.take_position(), _at(when))


def sleep_async(duration: timedelta | float) -> Coroutine[Any, Any, None]:
    """``sleep`` for async handlers: ``await jobs.sleep_async(...)``.

    Like ``call_async()``, it takes its call index when called, not when awaited.
    """
    context.current_context()
    return _sleep_async(durable.take_position(), _after(duration, "jobs.sleep: duration"))


def sleep_until_async(when: datetime) -> Coroutine[Any, Any, None]:
    """``sleep_until`` for async handlers: ``await jobs.sleep_until_async(...)``."""
    context.current_context()
    return _sleep_async(durable.take_position(), _at(when))


def _sleep(pos: durable.Position, deadline: Deadline) -> None:
    cp = durable.checkpoint_at(pos)
    if cp is None:
        until = deadline(context.now())
        durable.record(pos, SLEEP, _encode_deadline(until))
    else:
        until = _replayed(pos, cp)
    _wait_until(until)


async def _sleep_async(pos: durable.Position, deadline: Deadline) -> None:
    cp = await durable.checkpoint_at_async(pos)
    if cp is None:
        until = deadline(context.now())
        await asyncio.to_thread(durable.record, pos, SLEEP, _encode_deadline(until))
    else:
        until = _replayed(pos, cp)
    _wait_until(until)


def _wait_until(until: datetime) -> None:
    if until > context.now():
        raise Suspend(until, "sleep")


def _after(duration: timedelta | float, what: str) -> Deadline:
    """The deadline ``duration`` after a given moment; ``what`` names the argument."""
    if isinstance(duration, timedelta):
        delay = duration
    elif isinstance(duration, int | float) and not isinstance(duration, bool):
        if not math.isfinite(duration) or duration < 0:
            raise InvalidCallArguments(
                f"{what} must be a finite number of seconds >= 0, got {duration!r}"
            )
        try:
            delay = timedelta(seconds=duration)
        except OverflowError:
            raise InvalidCallArguments(f"{what} is out of range: {duration!r}") from None
    else:
        raise InvalidCallArguments(f"{what} must be a timedelta or seconds, got {duration!r}")
    if delay < timedelta(0):
        raise InvalidCallArguments(f"{what} must not be negative, got {duration!r}")

    def deadline(now: datetime) -> datetime:
        try:
            return now + delay
        except OverflowError:
            raise InvalidCallArguments(f"{what} is out of range: {duration!r}") from None

    return deadline


def _at(when: datetime) -> Deadline:
    if not isinstance(when, datetime):
        raise InvalidCallArguments(f"jobs.sleep_until: expected a datetime, got {when!r}")
    until = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return lambda _now: until


def _encode_deadline(until: datetime) -> bytes:
    return codec.dumps({"until": until.isoformat()})


def _replayed(pos: durable.Position, cp: Checkpoint) -> datetime:
    """The deadline a sleep's checkpoint holds; ``NondeterminismError`` if the step at
    this position was something else when it was checkpointed."""
    _same_kind(pos, cp, SLEEP, "a sleep")
    return _deadline_of(cp)


def _deadline_of(cp: Checkpoint) -> datetime:
    stored = codec.loads(cp.result)
    return datetime.fromisoformat(stored["until"]).astimezone(UTC)


def _same_kind(pos: durable.Position, cp: Checkpoint, call_type: str, what: str) -> None:
    if cp.call_type != call_type:
        raise NondeterminismError(
            f"durable call {pos.path} of job {pos.ctx.job.id} is {what} on this run but was"
            f" {cp.call_type!r} when it was checkpointed; the workflow's calls must happen in"
            " the same order on every run"
        )


# -- signals ----------------------------------------------------------------------------


def check_signal_name(name: object) -> str:
    """A signal's name: a non-empty string of at most 200 characters, storable, not
    starting with ``_`` (reserved); ``ValueError`` otherwise."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(
            f"a signal name must be a non-empty string of at most 200 characters, got {name!r}"
        )
    if name.startswith("_"):
        raise ValueError(f"signal names starting with '_' are reserved, got {name!r}")
    if "\x00" in name:
        raise ValueError("a signal name must not contain NUL characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"a signal name must be valid Unicode, got {name!r}") from None
    return name


def _signal_name(name: object, where: str) -> str:
    try:
        return check_signal_name(name)
    except ValueError as exc:
        raise InvalidCallArguments(f"{where}: {exc}") from None


def wait_for_signal(name: str, timeout: timedelta | float | None = None) -> Any:
    """Consume the oldest pending signal ``name`` sent to this job and return its
    payload; with none pending, suspend the job until one arrives.

    ``timeout`` (a timedelta or seconds; the deadline is fixed on the first run): once it
    has passed without a signal, raise ``SignalTimeout``. What the wait observed is
    checkpointed: a replay returns the same payload (or raises again) and consumes
    nothing. Outside a job: ``NotInJobError``.
    """
    context.current_context()
    checked = _signal_name(name, "jobs.wait_for_signal")
    after = None if timeout is None else _after(timeout, "jobs.wait_for_signal: timeout")
    return _wait_for_signal(durable.take_position(), checked, after)


def wait_for_signal_async(
    name: str, timeout: timedelta | float | None = None
) -> Coroutine[Any, Any, Any]:
    """``wait_for_signal`` for async handlers (its call index is taken when called)."""
    context.current_context()
    checked = _signal_name(name, "jobs.wait_for_signal")
    after = None if timeout is None else _after(timeout, "jobs.wait_for_signal: timeout")
    return asyncio.to_thread(_wait_for_signal, durable.take_position(), checked, after)


def peek_signal(name: str, default: Any = None) -> Any:
    """The payload of the oldest pending signal ``name``, or ``default``: never
    suspends, never consumes. Checkpointed: a replay sees what the first run saw."""
    context.current_context()
    checked = _signal_name(name, "jobs.peek_signal")
    return _peek_signal(durable.take_position(), checked, default)


def peek_signal_async(name: str, default: Any = None) -> Coroutine[Any, Any, Any]:
    """``peek_signal`` for async handlers."""
    context.current_context()
    checked = _signal_name(name, "jobs.peek_signal")
    return asyncio.to_thread(_peek_signal, durable.take_position(), checked, default)


def drain_signals(name: str) -> list[Any]:
    """Consume every pending signal ``name`` (at most ``MAX_DRAIN``) and return their
    payloads, oldest first; never suspends. Checkpointed like ``wait_for_signal``."""
    context.current_context()
    checked = _signal_name(name, "jobs.drain_signals")
    return _drain_signals(durable.take_position(), checked)


def drain_signals_async(name: str) -> Coroutine[Any, Any, list[Any]]:
    """``drain_signals`` for async handlers."""
    context.current_context()
    checked = _signal_name(name, "jobs.drain_signals")
    return asyncio.to_thread(_drain_signals, durable.take_position(), checked)


def _wait_for_signal(pos: durable.Position, name: str, after: Deadline | None) -> Any:
    cp = durable.checkpoint_at(pos)
    if cp is None:
        until = None if after is None else _signal_deadline(pos, after)
        cp = _observe(pos, name, WAIT_FOR_SIGNAL, consume=True, limit=1, summary=_first)
        if cp is None:
            if until is None or until > context.now():
                raise Suspend(until, signal_wait(name), signal=name)
            # The deadline has passed with no signal: that is what this wait observed.
            durable.record(pos, WAIT_FOR_SIGNAL, codec.dumps({"name": name, "timeout": True}))
            cp = durable.checkpoint_at(pos)
            assert cp is not None
    seen = _observed(pos, cp, WAIT_FOR_SIGNAL, name, "a wait for a signal")
    if seen.get("timeout"):
        raise SignalTimeout(f"no signal {name!r} came before the wait's timeout")
    return seen.get("payload")


def _peek_signal(pos: durable.Position, name: str, default: Any) -> Any:
    cp = durable.checkpoint_at(pos)
    if cp is None:
        cp = _observe(pos, name, PEEK_SIGNAL, consume=False, limit=1, summary=_peeked)
    assert cp is not None
    seen = _observed(pos, cp, PEEK_SIGNAL, name, "a peek at a signal")
    return seen["payload"] if seen.get("found") else default


def _drain_signals(pos: durable.Position, name: str) -> list[Any]:
    cp = durable.checkpoint_at(pos)
    if cp is None:
        cp = _observe(pos, name, DRAIN_SIGNALS, consume=True, limit=MAX_DRAIN, summary=_all)
    assert cp is not None
    payloads: list[Any] = _observed(pos, cp, DRAIN_SIGNALS, name, "a drain of signals")["payloads"]
    return payloads


Summary = Callable[[str, list[Any]], dict[str, Any] | None]


def _first(name: str, payloads: list[Any]) -> dict[str, Any] | None:
    return {"name": name, "payload": payloads[0]} if payloads else None


def _peeked(name: str, payloads: list[Any]) -> dict[str, Any] | None:
    found = bool(payloads)
    return {"name": name, "found": found, "payload": payloads[0] if found else None}


def _all(name: str, payloads: list[Any]) -> dict[str, Any] | None:
    return {"name": name, "payloads": payloads}


def _checkpoint(pos: durable.Position, call_type: str, summary: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        job_id=pos.ctx.job.id,
        call_index=pos.index,
        call_type=call_type,
        result=codec.dumps(summary),
        scope=pos.scope,
    )


def _observe(
    pos: durable.Position,
    name: str,
    call_type: str,
    *,
    consume: bool,
    limit: int,
    summary: Summary,
) -> Checkpoint | None:
    """Observe the job's pending signals ``name`` and checkpoint what ``summary`` makes
    of their payloads, in one fenced transaction; the checkpoint, or None when
    ``summary`` made none (then nothing was consumed either)."""
    ctx, job = pos.ctx, pos.ctx.job
    storage = ctx.queue.storage
    made: list[Checkpoint] = []
    tries = 0

    def record(payloads: list[bytes | None]) -> Checkpoint | None:
        made.clear()
        values = [None if p is None else codec.loads(p) for p in payloads]
        data = summary(name, values)
        if data is None:
            return None
        made.append(_checkpoint(pos, call_type, data))
        return made[0]

    def attempt() -> bool:
        nonlocal tries
        tries += 1
        if tries > 1 and _stored_at(pos):
            return True  # an earlier try committed, and only its reply was lost
        observed = storage.observe_signals(
            job.id,
            name,
            worker_id=ctx.worker_id,
            fence=job.fence,
            limit=limit,
            consume=consume,
            record=record,
        )
        return observed is not None

    held = retry_transient(
        attempt, within=ctx.lock_timeout, what=f"reading the signals of job {job.id}"
    )
    if not held:
        raise context.fenced_out(
            ctx, f"job {job.id} lost its lock; step {pos.path} was not recorded"
        )
    stored = _stored_at(pos) if tries > 1 else None
    if stored is not None:
        durable.remember(pos, stored)
        return stored
    if not made:
        return None
    durable.remember(pos, made[0])
    return made[0]


def _stored_at(pos: durable.Position) -> Checkpoint | None:
    """The checkpoint the storage holds at ``pos`` (read again, past this run's cache)."""
    for cp in pos.ctx.queue.storage.get_checkpoints(pos.ctx.job.id):
        if (cp.scope, cp.call_index) == (pos.scope, pos.index):
            return cp
    return None


def _observed(
    pos: durable.Position, cp: Checkpoint, call_type: str, name: str, what: str
) -> dict[str, Any]:
    _same_kind(pos, cp, call_type, what)
    seen: dict[str, Any] = codec.loads(cp.result)
    if seen.get("name") != name:
        raise NondeterminismError(
            f"durable call {pos.path} of job {pos.ctx.job.id} observes signal {name!r} on"
            f" this run but observed {seen.get('name')!r} when it was checkpointed; the"
            " workflow's calls must happen in the same order on every run"
        )
    return seen


def _signal_deadline(pos: durable.Position, after: Deadline) -> datetime:
    """A signal wait's deadline: the first run's, checkpointed in the wait's own scope."""
    slot = durable.Position(pos.ctx, pos.replay, pos.path, 0)
    cp = durable.checkpoint_at(slot)
    if cp is not None:
        _same_kind(slot, cp, SIGNAL_DEADLINE, "a signal wait's deadline")
        return _deadline_of(cp)
    until = after(context.now())
    durable.record(slot, SIGNAL_DEADLINE, _encode_deadline(until))
    return until


# -- progress ---------------------------------------------------------------------------


def set_progress(value: Any) -> None:
    """Record the running job's progress: any JSON value, visible as ``Job.progress``
    (the last write wins). Not a step: it takes no call index and is not replayed.

    Fenced to the running run: a run that lost its lock gets ``StaleJobError``. A value
    JSON cannot carry raises ``TypeError``; one bigger than the queue's ``max_payload``,
    ``ValueError``. A run told to stop gets ``Cancelled``.
    """
    ctx = context.active_context()
    _store_progress(ctx, _encode_progress(ctx, value))


def set_progress_async(value: Any) -> Coroutine[Any, Any, None]:
    """``set_progress`` for async handlers: the write runs in a thread."""
    ctx = context.active_context()
    return asyncio.to_thread(_store_progress, ctx, _encode_progress(ctx, value))


def _encode_progress(ctx: context.JobContext, value: Any) -> bytes | None:
    if value is None:
        return None
    try:
        encoded = codec.dumps(value)
    except TypeError as exc:
        raise TypeError(f"jobs.set_progress: {exc}") from exc
    limit = ctx.queue.max_payload
    if limit is not None and len(encoded) > limit:
        raise ValueError(
            f"jobs.set_progress: the value encodes to {len(encoded):,} bytes, over the queue's"
            f" limit of {limit:,}"
        )
    return encoded


def _store_progress(ctx: context.JobContext, encoded: bytes | None) -> None:
    job = ctx.job
    stored = retry_transient(
        lambda: ctx.queue.storage.set_progress(
            job.id, encoded, worker_id=ctx.worker_id, fence=job.fence
        ),
        within=ctx.lock_timeout,
        what=f"saving the progress of job {job.id}",
    )
    if not stored:
        raise context.fenced_out(ctx, f"job {job.id} lost its lock; its progress was not recorded")
    job.progress = codec.loads(encoded) if encoded is not None else None
