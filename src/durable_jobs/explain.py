"""``queue.explain(job_id)``: why a job is, or is not, running.

The reasons are checked in a fixed order and the first that holds is given: not found;
finished; paused (the job, then its queue); waiting (a deadline, children, a signal);
delayed until ``run_at``; held by a concurrency cap, then a rate limit; no live worker
serves its queue, then none of those knows its type; running; next in line. A running
job is running whatever else holds (its queue's pause, say, stops only claims).

Caps and rate limits are those of the handlers registered in the explaining process
(the workers' registrations are not stored); a job of a type registered elsewhere is
never said to be held by them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .job import Job, JobStatus, utcnow
from .options import Limits
from .storage import JobStore, WorkerInfo
from .storage.limits import type_limits

__all__ = ["LIVE_WORKER_WINDOW", "ExplainReason", "Explanation", "explain_job"]

#: A worker is live while its last heartbeat is this recent. Workers heartbeat every
#: lock_timeout / 5, so this covers lock timeouts up to 5 minutes.
LIVE_WORKER_WINDOW = timedelta(seconds=60)


class ExplainReason(enum.StrEnum):
    """The stable codes of ``Explanation.reason``, in the order they are checked."""

    NOT_FOUND = "not_found"
    FINISHED = "finished"
    JOB_PAUSED = "job_paused"
    QUEUE_PAUSED = "queue_paused"
    WAITING = "waiting"
    DELAYED = "delayed"
    CONCURRENCY_CAP = "concurrency_cap"
    RATE_LIMIT = "rate_limit"
    NO_WORKER_FOR_QUEUE = "no_worker_for_queue"
    NO_WORKER_FOR_TYPE = "no_worker_for_type"
    RUNNING = "running"
    NEXT_IN_LINE = "next_in_line"


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a job is (not) running: ``reason``, a one-sentence ``message`` and the
    ``facts`` behind it (times are aware UTC datetimes, durations seconds)."""

    job_id: str
    reason: ExplainReason
    message: str
    facts: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The explanation as JSON-ready values (times in ISO 8601)."""
        facts = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in self.facts.items()}
        return {
            "job_id": self.job_id,
            "reason": self.reason.value,
            "message": self.message,
            "facts": facts,
        }


LimitsOf = Callable[[str], Limits | None]


def explain_job(
    storage: JobStore, job_id: str, limits_of: LimitsOf, *, now: datetime | None = None
) -> Explanation:
    """The first reason that holds for job ``job_id`` (see the module's description);
    ``limits_of(type)`` gives a job type's registered caps and rate limits."""
    job = storage.get_job(job_id)
    if job is None:
        return Explanation(job_id, ExplainReason.NOT_FOUND, f"No job has the id {job_id!r}.")
    now = now or utcnow()
    if job.status.is_terminal:
        return _finished(job)
    if job.status is JobStatus.RUNNING:
        return _running(storage, job, now)
    if job.status is JobStatus.PAUSED or (
        job.status is JobStatus.WAITING and job.paused_from is not None
    ):
        return _job_paused(job)
    paused_at = storage.paused_queues().get(job.queue)
    if paused_at is not None:
        return _queue_paused(job, paused_at)
    if job.status is JobStatus.WAITING:
        return _waiting(storage, job, now)
    if job.run_at is not None and job.run_at > now:
        return _delayed(job, now)
    return _due(storage, job, limits_of(job.type), now)


_FINISHED_VERBS = {
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "was cancelled",
}


def _finished(job: Job) -> Explanation:
    at = job.finished_at
    when = f" at {_at(at)}" if at is not None else ""
    failed = job.status is JobStatus.FAILED
    error = f": {_first_line(job.last_error)}" if failed else ""
    message = f"It {_FINISHED_VERBS[job.status]}{when}{error}."
    facts = {
        "status": job.status.value,
        "finished_at": at,
        "attempts": job.attempt,
        "error": job.last_error if failed else None,
    }
    return Explanation(job.id, ExplainReason.FINISHED, message, facts)


def _job_paused(job: Job) -> Explanation:
    if job.status is JobStatus.WAITING:
        message = (
            f"It is paused: it still waits ({job.waiting_for}) and is held once it wakes,"
            " until resumed."
        )
    else:
        message = "It is paused: no worker claims it until it is resumed."
    facts = {"resumes_to": job.paused_from, "waiting_for": job.waiting_for}
    return Explanation(job.id, ExplainReason.JOB_PAUSED, message, facts)


def _queue_paused(job: Job, paused_at: datetime) -> Explanation:
    message = (
        f"Its queue {job.queue!r} is paused (since {_at(paused_at)}): no worker claims"
        " from it until it is resumed."
    )
    facts = {"queue": job.queue, "paused_at": paused_at, "status": job.status.value}
    return Explanation(job.id, ExplainReason.QUEUE_PAUSED, message, facts)


def _waiting(storage: JobStore, job: Job, now: datetime) -> Explanation:
    what = job.waiting_for or ""
    kind, _, detail = what.partition(":")
    until = job.wait_until
    facts: dict[str, Any] = {"waiting_for": kind or None, "until": until}
    deadline = f", until {_at(until)} ({_span(until - now)} from now)" if until else ""
    if kind == "signal":
        facts["signal"] = detail
        message = f"It waits for the signal {detail!r}{deadline}."
    elif kind == "children":
        done, _, of = detail.partition("/")
        total = int(of or 0)
        # Its own children count down its row as they finish; jobs that are not its
        # children (a wait_for on other ids) are looked at again at the deadline, and
        # counted as of the last look.
        left = storage.explain_reads().children_left(job.id)
        finished = max(0, min(total - left if left is not None else int(done or 0), total))
        facts.update(children_finished=finished, children_total=total)
        again = f" (it looks again at {_at(until)})" if until else ""
        message = f"It waits for its children: {finished} of {total} finished{again}."
    elif kind == "sleep" and until is not None:
        message = f"It sleeps until {_at(until)} ({_span(until - now)} from now)."
    else:
        message = f"It waits ({what or 'for a wake-up'}){deadline}."
    return Explanation(job.id, ExplainReason.WAITING, message, facts)


def _delayed(job: Job, now: datetime) -> Explanation:
    assert job.run_at is not None
    left = job.run_at - now
    after = ""
    if job.status is JobStatus.RETRYING:
        after = f", its retry after run {job.attempt} failed ({_first_line(job.last_error)})"
    message = f"It is delayed until {_at(job.run_at)} ({_span(left)} from now){after}."
    facts = {
        "run_at": job.run_at,
        "seconds": round(left.total_seconds(), 3),
        "status": job.status.value,
        "attempt": job.attempt,
    }
    return Explanation(job.id, ExplainReason.DELAYED, message, facts)


def _due(storage: JobStore, job: Job, limits: Limits | None, now: datetime) -> Explanation:
    if limits is not None:
        held = _held(storage, job, limits)
        if held is not None:
            return held
    live = storage.live_workers(LIVE_WORKER_WINDOW)
    serving = [w for w in live if job.queue in w.queues]
    if not serving:
        message = f"No live worker serves its queue {job.queue!r}."
        facts = {"queue": job.queue, "live_workers": len(live)}
        return Explanation(job.id, ExplainReason.NO_WORKER_FOR_QUEUE, message, facts)
    if not any(job.type in w.types for w in serving):
        message = f"No live worker of queue {job.queue!r} knows its type {job.type!r}."
        facts = {"type": job.type, "queue": job.queue, "serving_workers": [w.id for w in serving]}
        return Explanation(job.id, ExplainReason.NO_WORKER_FOR_TYPE, message, facts)
    ahead = storage.explain_reads().jobs_ahead(job.id, now)
    if ahead:
        message = f"It is next in line behind {ahead} due job(s) of queue {job.queue!r}."
    else:
        message = f"It is first in line in queue {job.queue!r}: the next free worker takes it."
    facts = {"ahead": ahead, "queue": job.queue, "serving_workers": [w.id for w in serving]}
    return Explanation(job.id, ExplainReason.NEXT_IN_LINE, message, facts)


def _held(storage: JobStore, job: Job, limits: Limits) -> Explanation | None:
    """The cap or rate limit of ``job``'s type that holds it back now, if one does."""
    reads = storage.explain_reads()
    if limits.concurrency is not None:
        running = reads.running_of_type(job.type)
        keyed = limits.concurrency_key is not None
        key = (job.concurrency_key or "") if keyed else None
        count = running.get(key, 0) if key is not None else sum(running.values())
        if count >= limits.concurrency:
            of = f" for key {key!r}" if keyed else ""
            message = (
                f"Its type {job.type!r} is at its concurrency cap{of}:"
                f" {count} of {limits.concurrency} running."
            )
            facts = {"type": job.type, "running": count, "cap": limits.concurrency, "key": key}
            return Explanation(job.id, ExplainReason.CONCURRENCY_CAP, message, facts)
    rate = limits.rate_limit
    if rate is not None:
        keyed = limits.rate_key is not None
        key = (job.rate_key or "") if keyed else ""
        tokens = reads.tokens(type_limits(job.type, limits), key)
        if tokens.left < 1:
            of = f" for key {key!r}" if keyed else ""
            message = (
                f"Its type {job.type!r} spent its rate limit of {rate.text}{of}:"
                f" the next run may start in {_span(timedelta(seconds=tokens.next_in))}."
            )
            facts = {
                "type": job.type,
                "rate_limit": rate.text,
                "tokens": round(tokens.left, 3),
                "next_token_in": round(tokens.next_in, 3),
                "key": key if keyed else None,
            }
            return Explanation(job.id, ExplainReason.RATE_LIMIT, message, facts)
    return None


def _running(storage: JobStore, job: Job, now: datetime) -> Explanation:
    worker = job.locked_by or "?"
    live = {w.id: w for w in storage.live_workers(LIVE_WORKER_WINDOW)}
    beat = job.heartbeat_at
    age = (now - beat).total_seconds() if beat is not None else None
    since = f", last heartbeat {_span(now - beat)} ago" if beat is not None else ""
    message = f"It is running on worker {worker}{since}."
    expires = job.lock_expires_at
    if worker not in live:
        if expires is not None and expires <= now:
            gone = f"its lock expired at {_at(expires)}: the next reaper takes it back"
        elif expires is not None:
            gone = f"it is taken back when its lock expires at {_at(expires)}"
        else:
            gone = "it is taken back when its lock expires"
        message = f"It is running on worker {worker}{since}, but that worker is gone: {gone}."
    facts = {
        "worker": worker,
        "worker_live": worker in live,
        "host": _host(live.get(worker)),
        "heartbeat_at": beat,
        "heartbeat_age": None if age is None else round(age, 3),
        "lock_expires_at": expires,
        "attempt": job.attempt,
        "pause_requested": job.paused_from is not None,
    }
    return Explanation(job.id, ExplainReason.RUNNING, message, facts)


def _host(worker: WorkerInfo | None) -> str | None:
    return None if worker is None else worker.host


def _at(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(delta: timedelta) -> str:
    """A duration for a sentence: "4.2 s", "12 min", "3 h", "2 days"."""
    seconds = max(0.0, delta.total_seconds())
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "no error recorded"
