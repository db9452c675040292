"""Child jobs and fan-out: ``spawn``, ``sub``, ``fan_out``, ``wait_for``.

A parent stores its children and the checkpoint of the step that made them in one
transaction fenced by its run (``SQLStorage.spawn``, by the batch insert path), so a
replay finds the checkpoint, gets the same ids back and stores nothing twice. Each child
records ``parent_id`` and ``parent_group``: the path of the parent's call that waits for
it.

Waiting for children is a suspension like a sleep's: the parent reads its children's
outcomes and, if they do not decide its wait yet, suspends (``Suspend`` with a
``ChildrenWait``); the run that has just stored a fan-out's children suspends without
that read, since the suspension counts the children finished so far anyway. The
database then decides: the parent's row counts down what is left of its wait, and the
child outcome that decides it resumes the parent in the same transaction
(``SQLStorage._settle``); workers resume a decided parent whose wake-up was lost
(``SQLStorage.wake_decided``). The resumed run reads the children's stored outcomes
again: the outcomes themselves are never copied into the parent's checkpoints.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, NamedTuple

from . import codec, context, durable
from .durable import InvalidCallArguments
from .errors import ChildFailed, NondeterminismError, Suspend
from .job import Checkpoint, Job, JobStatus, children_wait, new_ids
from .queue import Stored
from .storage import ChildOutcome, ChildrenWait, retry_transient
from .storage.records import decided
from .storage.sql import CANCELLED

__all__ = [
    "FAN_OUT",
    "SPAWN",
    "WAIT_FOR",
    "Result",
    "Sub",
    "fan_out",
    "fan_out_async",
    "spawn",
    "spawn_async",
    "sub",
    "wait_for",
    "wait_for_async",
]

#: The ``call_type`` of the checkpoints of each step (what ``sdj jobs show`` lists).
SPAWN = "jobs.spawn"
FAN_OUT = "jobs.fan_out"
WAIT_FOR = "jobs.wait_for"
FAIL_FAST, COLLECT = "fail_fast", "collect"
#: How often a ``wait_for`` on jobs that are not all this job's children looks again:
#: only children's outcomes resume their parent.
FOREIGN_POLL = timedelta(seconds=1)


class Sub(NamedTuple):
    """A child job to enqueue, as ``enqueue`` would take it (``jobs.sub(...)``): a
    tuple, since a fan-out describes thousands of them at once."""

    target: str | Callable[..., Any]
    args: Any = None
    options: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Result:
    """The outcome of one child waited for, in the order given.

    ``ok``: it completed, and ``value`` is its result decoded like ``call()``'s (into
    its handler's return annotation when the handler is registered here). Otherwise
    ``value`` is None and ``error`` its stored error; a child not finished when a
    threshold was met has ``ok=False`` and ``error=None``.
    """

    index: int
    job_id: str
    ok: bool
    value: Any = None
    error: str | None = None


def sub(name: str | Callable[..., Any], args: Any = None, **options: Any) -> Sub:
    """Describe a child for ``fan_out``: the same arguments and options as ``enqueue``
    (except ``connection``). Checked when ``fan_out`` is called."""
    return Sub(name, args, dict(options))


# -- spawn --------------------------------------------------------------------------------


def spawn(name: str | Callable[..., Any], args: Any = None, **options: Any) -> str:
    """Enqueue a child of the running job and return its id; the job goes on.

    Takes the next call index and is checkpointed with the child's insert: a replay
    returns the same id and enqueues nothing. Wait for it with ``wait_for``. Arguments
    or options that do not fit raise ``InvalidCallArguments`` (a ``NoRetry``).
    """
    ctx = context.current_context()
    job = _child(ctx, Sub(name, args, dict(options)), "jobs.spawn")
    return _spawn(durable.take_position(), job)


def spawn_async(
    name: str | Callable[..., Any], args: Any = None, **options: Any
) -> Coroutine[Any, Any, str]:
    """``spawn`` for async handlers (its call index is taken when called)."""
    ctx = context.current_context()
    job = _child(ctx, Sub(name, args, dict(options)), "jobs.spawn")
    return asyncio.to_thread(_spawn, durable.take_position(), job)


def _spawn(pos: durable.Position, job: Job) -> str:
    cp = durable.checkpoint_at(pos)
    if cp is None:
        cp = _store_children(pos, lambda: [job], 1, SPAWN, {}, None)
    ids = _stored_ids(pos, cp, SPAWN, "a spawn")
    return ids[0]


# -- fan-out ------------------------------------------------------------------------------


def fan_out(
    subs: Iterable[Sub], on_failure: str = FAIL_FAST, threshold: float | None = None
) -> list[Result]:
    """Enqueue a child per ``jobs.sub(...)`` in one batch, then wait until the outcome is
    decided; return a ``Result`` per child, in order.

    ``on_failure="fail_fast"`` (the default): the first failed child raises
    ``ChildFailed`` and the unfinished children are cancelled. ``"collect"``: wait for
    every child; failed ones have ``ok=False``. ``threshold=p`` (0 < p <= 1): return
    once that share of the children succeeded, or raise ``ChildFailed`` once it no
    longer can (the unfinished children are then cancelled).

    The children and the step's checkpoint are stored in one transaction: a replay
    enqueues nothing twice. The job suspends (``waiting``, its slot free) while the
    outcome is undecided; the child outcome that decides it resumes the job.
    """
    context.current_context()
    rule = _rule(on_failure, threshold)
    described = _subs(subs)
    return _fan_out(durable.take_position(), described, rule)


def fan_out_async(
    subs: Iterable[Sub], on_failure: str = FAIL_FAST, threshold: float | None = None
) -> Coroutine[Any, Any, list[Result]]:
    """``fan_out`` for async handlers (its call index is taken when called)."""
    context.current_context()
    rule = _rule(on_failure, threshold)
    described = _subs(subs)
    return asyncio.to_thread(_fan_out, durable.take_position(), described, rule)


def _rule(on_failure: str, threshold: float | None) -> dict[str, Any]:
    if on_failure not in (FAIL_FAST, COLLECT):
        raise InvalidCallArguments(
            f"jobs.fan_out: on_failure must be 'fail_fast' or 'collect', got {on_failure!r}"
        )
    if threshold is not None:
        valid = isinstance(threshold, int | float) and not isinstance(threshold, bool)
        if not valid or not 0 < threshold <= 1:
            raise InvalidCallArguments(
                f"jobs.fan_out: threshold must be a number > 0 and <= 1, got {threshold!r}"
            )
    return {"on_failure": on_failure, "threshold": threshold}


def _wait_of(group: str, total: int, rule: dict[str, Any]) -> ChildrenWait:
    """The children wait a fan-out's rule makes of ``total`` children."""
    threshold = rule.get("threshold")
    if threshold is not None:
        needed = min(total, max(1, math.ceil(threshold * total - 1e-9))) if total else 0
        return ChildrenWait(group, total, needed, total - needed)
    tolerated = total if rule.get("on_failure") == COLLECT else 0
    return ChildrenWait(group, total, total, tolerated)


def _fan_out(pos: durable.Position, described: list[Sub], rule: dict[str, Any]) -> list[Result]:
    cp = durable.checkpoint_at(pos)
    fresh = cp is None
    if cp is None:
        # Built (and checked) only by the run that stores them, as they are stored: a
        # replay has their ids. Thousands of jobs that lived until the last was stored
        # would each be traced by the garbage collector's full passes.
        now = pos.ctx.queue.clock.now()  # one time for the batch, as enqueue_many does
        wait = _wait_of(pos.path, len(described), rule)

        def build() -> Iterator[Job]:
            return (_child(pos.ctx, s, "jobs.fan_out", now) for s in described)

        cp = _store_children(pos, build, len(described), FAN_OUT, rule, wait)
    stored = _stored(pos, cp, FAN_OUT, "a fan-out")  # decoded once: it holds every id
    ids: list[str] = stored["ids"]
    if len(ids) != len(described):
        raise NondeterminismError(
            f"durable call {pos.path} of job {pos.ctx.job.id} fans out {len(described)}"
            f" children on this run but fanned out {len(ids)} when it was checkpointed; the"
            " workflow's calls must happen in the same order on every run"
        )
    wait = _wait_of(pos.path, len(ids), stored)  # the first run's rule stands
    if fresh and not decided(*wait.counters(0, 0)):
        # Children stored a moment ago have hardly run: reading every outcome (all of
        # them, results included) would only confirm it. The suspension counts those
        # that did finish, and one that finds the wait decided resumes the job at once.
        raise Suspend(None, children_wait(0, len(ids)), children=wait)
    return _await(pos, ids, wait, foreign=False, fails=True)


# -- wait_for -----------------------------------------------------------------------------


def wait_for(job_ids: Iterable[str]) -> list[Result]:
    """Wait until every job of ``job_ids`` has finished, and return a ``Result`` per job,
    in order (failed ones have ``ok=False``; a job that does not exist, ``ok=False`` and
    an error saying so).

    Takes the next call index (checkpointed with the ids). Children of this job (from
    ``spawn``) resume it with the outcome of the last one; for other jobs the waiting
    job looks again every second.
    """
    context.current_context()
    ids = _ids(job_ids)
    return _wait_for(durable.take_position(), ids)


def wait_for_async(job_ids: Iterable[str]) -> Coroutine[Any, Any, list[Result]]:
    """``wait_for`` for async handlers (its call index is taken when called)."""
    context.current_context()
    ids = _ids(job_ids)
    return asyncio.to_thread(_wait_for, durable.take_position(), ids)


def _ids(job_ids: Iterable[str]) -> list[str]:
    if isinstance(job_ids, str):
        raise InvalidCallArguments("jobs.wait_for: expected a list of job ids, got a string")
    ids = list(job_ids)
    for id_ in ids:
        if not isinstance(id_, str) or not id_:
            raise InvalidCallArguments(f"jobs.wait_for: job ids must be strings, got {id_!r}")
    return ids


def _wait_for(pos: durable.Position, ids: list[str]) -> list[Result]:
    cp = durable.checkpoint_at(pos)
    if cp is None:
        durable.record(pos, WAIT_FOR, codec.dumps({"ids": ids}))
    elif _stored_ids(pos, cp, WAIT_FOR, "a wait for jobs") != ids:
        raise NondeterminismError(
            f"durable call {pos.path} of job {pos.ctx.job.id} waits for other jobs on this"
            " run than when it was checkpointed; the workflow's calls must happen in the same"
            " order on every run"
        )
    total = len(ids)
    wait = ChildrenWait(pos.path, total, total, total, ids=ids)
    return _await(pos, ids, wait, foreign=True, fails=False)


# -- waiting ------------------------------------------------------------------------------


def _await(
    pos: durable.Position, ids: list[str], wait: ChildrenWait, *, foreign: bool, fails: bool
) -> list[Result]:
    """The results of ``ids`` once their outcomes decide ``wait``; suspends until then.

    ``foreign``: the ids may name jobs that are not this job's children (then only a
    poll resumes it); ``fails``: a wait decided by too many failures raises
    ``ChildFailed`` (after cancelling the wait's unfinished children).
    """
    ctx = pos.ctx
    found, plain = _outcomes(ctx, ids, wait.group, foreign)
    # With ``plain``, each child not found completed with no result (see _outcomes).
    missing = None if plain else _NOT_FOUND
    outcomes = [found.get(id_, missing) for id_ in ids]
    ok = sum(1 for o in outcomes if o is None or o.status is JobStatus.COMPLETED)
    failed = sum(1 for o in outcomes if o is not None and o.status in _FAILED)
    left, need, spare = wait.counters(ok, failed)
    if not decided(left, need, spare):
        waiting_for = children_wait(ok + failed, wait.total)
        if foreign and not all(o is not None and o.parent_id == ctx.job.id for o in outcomes):
            raise Suspend(ctx.queue.clock.now() + FOREIGN_POLL, waiting_for)
        raise Suspend(None, waiting_for, children=wait)
    decoders: dict[str, Callable[[bytes], Any]] = {}
    results = [
        _result(ctx, decoders, index, id_, o)
        for index, (id_, o) in enumerate(zip(ids, outcomes, strict=True))
    ]
    if fails and spare < 0:
        storage = ctx.queue.storage
        retry_transient(
            lambda: storage.cancel_children(ctx.job.id, wait.group),
            within=ctx.lock_timeout,
            what=f"cancelling the children of job {ctx.job.id}",
        )
        raise _child_failed(results, found, failed, wait)
    return results


def _outcomes(
    ctx: context.JobContext, ids: list[str], group: str, foreign: bool
) -> tuple[dict[str, ChildOutcome], int]:
    """The outcomes of ``ids`` found, and how many more completed with no result (those
    are not in the first; only a fan-out's own group is read so)."""
    storage = ctx.queue.storage

    def read() -> tuple[dict[str, ChildOutcome], int]:
        if not foreign:
            # A fan-out's children are exactly its group's: read through the parent's
            # index. Should one have gone (deleted by hand), each id is looked up.
            found, plain = storage.group_outcomes(ctx.job.id, group)
            if plain + len(found) == len(ids) and (not found or found.keys() <= set(ids)):
                return found, plain
        return storage.children_outcomes(ids), 0

    return retry_transient(
        read, within=ctx.lock_timeout, what=f"reading the children of job {ctx.job.id}"
    )


def _result(
    ctx: context.JobContext,
    decoders: dict[str, Callable[[bytes], Any]],
    index: int,
    job_id: str,
    job: ChildOutcome | None,
) -> Result:
    """The ``Result`` of one child (None: it completed with no result; ``_NOT_FOUND``:
    there is no such job); ``decoders`` caches each job type's result decoder."""
    if job is None:
        return Result(index, job_id, True, None, None)
    if job is _NOT_FOUND:
        return Result(index, job_id, False, None, f"JobNotFound: no job with id {job_id!r}")
    if job.status is JobStatus.COMPLETED:
        if job.result is None:
            return Result(index, job_id, True, None, None)  # its handler returned None
        decode = decoders.get(job.type)
        if decode is None:
            handler = ctx.queue.handler(job.type)
            decode = codec.loads if handler is None else handler.decode_result
            decoders[job.type] = decode
        return Result(index, job_id, True, decode(job.result), None)
    if job.status in _FAILED:  # a cancelled child counts as failed
        return Result(index, job_id, False, None, job.last_error or job.status.value)
    return Result(index, job_id, False, None, None)


_FAILED = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
# Stands for a job that does not exist, where None stands for one completed with no result.
_NOT_FOUND = ChildOutcome("", "", JobStatus.FAILED, None, None, None, None)


def _child_failed(
    results: list[Result], found: dict[str, ChildOutcome], failed: int, wait: ChildrenWait
) -> ChildFailed:
    """The error of a wait decided by failures, naming its first failed child (one
    that failed by itself rather than by cancellation, if any)."""
    failures = [r for r in results if not r.ok and r.error is not None]

    def order(r: Result) -> tuple[bool, str, int]:
        job = found.get(r.job_id)
        at = job.finished_at.isoformat() if job is not None and job.finished_at else ""
        return (r.error == CANCELLED, at, r.index)

    first = min(failures, key=order)
    what = f"child {first.index} ({first.job_id}) failed: {first.error}"
    if wait.tolerated > 0:
        what = (
            f"the fan-out can no longer reach its threshold ({wait.needed} of {wait.total}"
            f" children must succeed; {failed} failed): {what}"
        )
    return ChildFailed(what, job_id=first.job_id, index=first.index, error=first.error)


# -- storing children ---------------------------------------------------------------------


def _subs(subs: Iterable[Sub]) -> list[Sub]:
    """The children a fan-out describes, each a ``Sub`` (``InvalidCallArguments``
    otherwise, before the call takes an index); built into jobs (and checked further)
    only by the run that stores them (``_child``)."""
    if isinstance(subs, Sub):
        raise InvalidCallArguments("jobs.fan_out: expected a list of jobs.sub(...), got one")
    described = list(subs)
    for s in described:
        if not isinstance(s, Sub):
            raise InvalidCallArguments(f"jobs.fan_out: expected jobs.sub(...), got {s!r}")
    return described


def _child(ctx: context.JobContext, described: Any, where: str, now: datetime | None = None) -> Job:
    """A child job built as ``enqueue`` builds one (created ``now``: the clock's by
    default); ``InvalidCallArguments`` if it does not fit (checked before the call takes
    an index)."""
    if not isinstance(described, Sub):
        raise InvalidCallArguments(f"{where}: expected jobs.sub(...), got {described!r}")
    if "connection" in described.options:
        raise InvalidCallArguments(
            f"{where}: children are stored with their parent's step, not in a connection's"
            " transaction"
        )
    try:
        job = ctx.queue.build_job(described.target, described.args, described.options, now)
    except (TypeError, ValueError) as exc:
        raise InvalidCallArguments(f"{where}: {exc}") from exc
    job.parent_id = ctx.job.id
    return job


def _store_children(
    pos: durable.Position,
    build: Callable[[], Iterable[Job]],
    count: int,
    call_type: str,
    extra: dict[str, Any],
    wait: ChildrenWait | None,
) -> Checkpoint:
    """Store the ``count`` jobs ``build()`` gives as children made by the step at
    ``pos``, with its checkpoint (the children's ids, and ``extra``), in one fenced
    transaction; the checkpoint stored. The jobs are drawn as they are stored (again on
    a retry), and kept only for those who are told of them."""
    ctx, parent = pos.ctx, pos.ctx.job
    storage = ctx.queue.storage
    group = pos.path
    ids = new_ids(count)
    cp = Checkpoint(
        job_id=parent.id,
        call_index=pos.index,
        call_type=call_type,
        result=codec.dumps({"ids": ids, **extra}),
        scope=pos.scope,
    )
    told = Stored(keep=ctx.queue.tells_of_jobs)
    tries = 0

    def children() -> Iterator[Job]:
        told.clear()
        for job, id_ in zip(build(), ids, strict=True):
            job.id, job.parent_group = id_, group
            told.add(job)
            yield job

    def attempt() -> bool:
        nonlocal tries
        tries += 1
        if tries > 1 and _stored_at(pos) is not None:
            return True  # an earlier try committed, and only its reply was lost
        return storage.spawn(
            parent.id, children(), cp, worker_id=ctx.worker_id, fence=parent.fence, wait=wait
        )

    held = retry_transient(
        attempt, within=ctx.lock_timeout, what=f"storing the children of job {parent.id}"
    )
    if not held:
        raise context.fenced_out(
            ctx, f"job {parent.id} lost its lock; step {pos.path} was not recorded"
        )
    stored = (_stored_at(pos) if tries > 1 else None) or cp
    durable.remember(pos, stored)
    if stored.id == cp.id:
        ctx.queue.announce_stored(told)
    return stored


def _stored_at(pos: durable.Position) -> Checkpoint | None:
    """The checkpoint the storage holds at ``pos`` (read again, past this run's cache)."""
    for cp in pos.ctx.queue.storage.get_checkpoints(pos.ctx.job.id):
        if (cp.scope, cp.call_index) == (pos.scope, pos.index):
            return cp
    return None


def _stored_ids(pos: durable.Position, cp: Checkpoint, call_type: str, what: str) -> list[str]:
    ids: list[str] = _stored(pos, cp, call_type, what)["ids"]
    return ids


def _stored(pos: durable.Position, cp: Checkpoint, call_type: str, what: str) -> dict[str, Any]:
    """The decoded checkpoint ``cp`` of a step that is ``what`` (``call_type``) on this
    run too (``NondeterminismError`` otherwise)."""
    if cp.call_type != call_type:
        raise NondeterminismError(
            f"durable call {pos.path} of job {pos.ctx.job.id} is {what} on this run but was"
            f" {cp.call_type!r} when it was checkpointed; the workflow's calls must happen in"
            " the same order on every run"
        )
    stored: dict[str, Any] = codec.loads(cp.result or b"{}")
    return stored
