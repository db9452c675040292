"""``Scheduler``: enqueues the due runs of a queue's schedules, one job per fire time.

Workers started with ``scheduler=True`` call ``run_once`` from their maintenance thread.
Any number of schedulers may run at once: each run carries the unique key
``schedule:<name>:<fire time>``, and the database's unique index stores the first insert
and ignores the others. Each scheduler tracks the next fire time in memory, so a call with
nothing due costs no query; ``sdj_schedules`` records every schedule's last and next fire
time, for listings and for schedulers that start later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from .events import JobEnqueued
from .job import Job
from .storage import JobStore, ScheduleState
from .storage.sql import utc

if TYPE_CHECKING:
    from .queue import Queue
    from .schedules import Schedule

__all__ = ["DEFAULT_GRACE", "Scheduler"]

log = logging.getLogger("durable_jobs")

#: How late a fire time may be handled and still count as on time rather than missed.
DEFAULT_GRACE = timedelta(seconds=60)
_POLL = 0.5
_RELOG_AFTER = 300.0  # seconds between log lines of a schedule that keeps failing the same way


@dataclass
class _Tracked:
    pending: datetime  # the earliest fire time this scheduler has not handled
    checked_at: datetime | None  # the last run_once that looked; None until the first


class Scheduler:
    """Enqueues the due runs of ``queue.schedules``.

    A fire time is missed when no scheduler handled it within ``grace``: it passed while
    none ran, or while this one was stalled. ``catch_up="one"`` enqueues one run for the
    latest missed fire time of a stretch, not one per missed tick; ``"none"`` enqueues
    none. Fire times handled on time each get their run. A schedule no scheduler has seen
    before (or whose spec changed) first fires at its next fire time after that.

    Raises ``ValueError`` if a schedule has no handler registered under its name.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        catch_up: Literal["one", "none"] = "one",
        grace: timedelta = DEFAULT_GRACE,
    ) -> None:
        if catch_up not in ("one", "none"):
            raise ValueError(f'catch_up must be "one" or "none", got {catch_up!r}')
        if not isinstance(grace, timedelta) or grace < timedelta(0):
            raise ValueError(f"grace must be a non-negative timedelta, got {grace!r}")
        missing = [name for name in queue.schedules if queue.handler(name) is None]
        if missing:
            raise ValueError(
                f"no handler registered for scheduled job type(s) {', '.join(missing)}: a schedule"
                " enqueues jobs of its own name; register one with @queue.job() or"
                " queue.register()"
            )
        self.queue = queue
        self.catch_up = catch_up
        self.grace = grace
        self._tracked: dict[str, _Tracked] = {}
        self._unhandled: set[str] = set()  # schedules added later without a handler, logged
        # Schedules whose own code failed (say a custom next_after raised): their error and
        # when it was last logged. They are retried every poll, not in a tight loop.
        self._failing: dict[str, tuple[str, float]] = {}
        self._healthy = True

    def run_once(self, now: datetime | None = None) -> int:
        """Enqueue the runs due at ``now`` (default: the current time); returns how many."""
        now = self.queue.clock.now() if now is None else utc(now)
        self._healthy = False
        storage = self.queue.storage
        self._track_new(storage, now)
        inserted = 0
        for name, tracked in self._tracked.items():
            if tracked.pending <= now:
                fired = self._isolated(
                    storage, name, partial(self._fire, storage, name, tracked, now)
                )
                if fired is None:
                    continue  # not handled: left for the next tick, as if not looked at
                inserted += fired
            tracked.checked_at = now
        self._healthy = True
        return inserted

    def next_due(self, now: datetime | None = None) -> datetime | None:
        """When ``run_once`` next has work to do; None when there are no schedules."""
        now = self.queue.clock.now() if now is None else utc(now)
        if any(name not in self._failing for name in self._untracked()):
            return now
        pending = (t.pending for name, t in self._tracked.items() if name not in self._failing)
        return min(pending, default=None)

    def seconds_until_due(self, at_most: float = _POLL) -> float:
        """How long a caller may sleep before ``run_once``, capped at ``at_most``.

        Schedules can be added at any time, hence the cap; after a failed ``run_once`` it
        is the whole cap, so a database outage is retried without spinning.
        """
        now = self.queue.clock.now()
        due = self.next_due(now)
        if due is None or not self._healthy:
            return at_most
        return min(at_most, max(0.0, (due - now).total_seconds()))

    def _untracked(self) -> Iterator[str]:
        for name in list(self.queue.schedules):  # a copy: other threads may add schedules
            if name in self._tracked:
                continue
            if self.queue.handler(name) is not None:
                yield name
            elif name not in self._unhandled:
                self._unhandled.add(name)
                log.error("schedule %r has no handler registered under its name; not firing", name)

    def _track_new(self, storage: JobStore, now: datetime) -> None:
        new = list(self._untracked())
        if not new:
            return
        rows = {row.name: row for row in storage.list_schedules()}
        for name in new:
            self._isolated(storage, name, partial(self._track, storage, name, rows, now))

    def _track(
        self, storage: JobStore, name: str, rows: dict[str, ScheduleState], now: datetime
    ) -> int:
        schedule, args, options = self.queue.schedules[name]
        row = rows.get(name)
        if row is not None and row.spec == schedule.spec and row.next_fire_at is not None:
            # Known to the fleet: carry on from its record, catching up if it is past.
            self._tracked[name] = _Tracked(row.next_fire_at, None)
            return 0
        # First seen: nothing before now is owed. checked_at = now makes the first fire
        # time an on-time one.
        pending = schedule.next_after(now)
        queue_name = self._job(name, args, options, pending).queue
        storage.upsert_schedule(name, schedule.spec, queue_name, None, pending)
        self._tracked[name] = _Tracked(pending, now)
        return 0

    def _isolated(self, storage: JobStore, name: str, work: Callable[[], int]) -> int | None:
        """Run one schedule's ``work``; if the schedule itself fails, log it and go on.

        A database error is everybody's: it ends the whole ``run_once``, retried at the
        next tick. Any other error belongs to this schedule (a custom ``next_after`` that
        raises, options that no longer build a job): it is logged, naming the schedule,
        and the other schedules still fire. Returns None when ``work`` failed.
        """
        try:
            result = work()
        except storage.database_errors:
            raise
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            previous = self._failing.get(name)
            logged = previous[1] if previous is not None and previous[0] == text else None
            if logged is None or time.monotonic() - logged >= _RELOG_AFTER:
                log.error(
                    "schedule %r failed and did not fire (%s); the other schedules still fire,"
                    " and it is tried again at the next tick",
                    name,
                    text,
                    exc_info=exc,
                )
                logged = time.monotonic()
            self._failing[name] = (text, logged)
            return None
        if self._failing.pop(name, None) is not None:
            log.info("schedule %r works again", name)
        return result

    def _fire(self, storage: JobStore, name: str, tracked: _Tracked, now: datetime) -> int:
        schedule, args, options = self.queue.schedules[name]
        on_time = tracked.checked_at is not None and now - tracked.checked_at <= self.grace
        if on_time:
            # Every fire time since the last look, which was at most `grace` ago.
            fires = list(_fires_between(schedule, tracked.pending, now))
            latest = fires[-1]
        else:
            latest = _latest_fire(schedule, tracked.pending, now)
            keep = self.catch_up == "one" or now - latest <= self.grace
            fires = [latest] if keep else []
            if latest != tracked.pending or not keep:
                log.info(
                    "schedule %r missed its fire times from %s to %s; %s",
                    name,
                    tracked.pending.isoformat(),
                    latest.isoformat(),
                    f"one catch-up run for {latest.isoformat()}" if keep else "skipping them",
                )
        fired: datetime | None = None
        inserted = 0
        for fire in fires:
            job = self._job(name, args, options, fire)
            if storage.enqueue_unique(job, f"schedule:{name}:{fire.isoformat()}"):
                inserted += 1
                fired = fire
                if self.queue.bus.has_subscribers:
                    self.queue.bus.publish(JobEnqueued(job))
        following = schedule.next_after(latest)
        # Only the scheduler that stored a run records it (a losing one has nothing new);
        # a skip moves next_fire_at on so listings do not show a past time.
        if fired is not None or not fires:
            queue_name = self._job(name, args, options, following).queue
            storage.upsert_schedule(name, schedule.spec, queue_name, fired, following)
        tracked.pending = following
        return inserted

    def _job(self, name: str, args: Any, options: dict[str, Any], fire: datetime) -> Job:
        # Due at the fire time (plus any delay), so a catch-up run is due at once.
        handler = self.queue.handler(name)
        default = handler.defaults.get("delay", timedelta(0)) if handler else timedelta(0)
        delay: timedelta = options.get("delay", default)
        rest = {key: value for key, value in options.items() if key != "delay"}
        return self.queue.build_job(name, args, {**rest, "at": fire + delay})


def _fires_between(schedule: Schedule, first: datetime, now: datetime) -> Iterator[datetime]:
    """The fire times from ``first`` (one of them) up to ``now``."""
    fire = first
    while fire <= now:
        yield fire
        fire = schedule.next_after(fire)


def _latest_fire(schedule: Schedule, first: datetime, now: datetime) -> datetime:
    """The latest fire time at or before ``now``, given ``first``, one at or before it.

    Bisects between them: some dozens of ``next_after`` calls after any downtime, where
    stepping through the missed ticks could take millions.
    """
    latest, bound = first, now  # invariant: no fire time lies in (bound, now]
    if schedule.next_after(latest) > now:
        return latest  # the usual case: a single fire time is due
    while bound > latest:
        middle = latest + (bound - latest) // 2
        fire = schedule.next_after(middle)
        if fire <= bound:
            latest = fire
        else:
            bound = middle
    return latest
