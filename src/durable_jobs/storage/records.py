"""The records storage takes and returns besides jobs and checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ..job import Job, JobStatus

__all__ = [
    "ChildOutcome",
    "ChildrenWait",
    "Claim",
    "ClaimedJobs",
    "GroupOutcomes",
    "Outcome",
    "QueueDepth",
    "ScheduleState",
    "TypeLimits",
    "WorkerInfo",
    "decided",
]


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker as recorded in the database."""

    id: str
    host: str
    pid: int
    queues: list[str]
    types: list[str]
    started_at: datetime
    heartbeat_at: datetime
    version: str = ""  # the library's release ('' for a worker of an older one)


@dataclass(frozen=True, slots=True)
class TypeLimits:
    """A job type's fleet-wide limits as claims enforce them: at most ``concurrency``
    jobs of the type running at once (per ``concurrency_key`` when ``concurrency_keyed``),
    and at most ``rate`` runs started per ``per`` seconds (a token bucket per
    ``rate_key`` when ``rate_keyed``, of ``rate`` tokens refilled over ``per``)."""

    job_type: str
    concurrency: int | None = None
    concurrency_keyed: bool = False
    rate: int | None = None
    per: float = 1.0
    rate_keyed: bool = False


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim to make: up to ``limit`` due jobs of ``queue``.

    ``min_retries`` leaves out jobs with fewer retries: a worker claiming ahead of its
    free slots sets it to 1, since a claimed run counts as an attempt even if the
    worker dies before starting it, and a job allowed a single run must not lose it so.

    ``limited``: job types with fleet-wide limits, claimed within them (see
    ``storage/limits.py``) alongside the other jobs, all in dequeue order; they are
    never claimed as plain jobs. ``plain=False`` claims only the ``limited`` types.
    """

    queue: str
    limit: int
    skip_types: Sequence[str] = ()
    min_retries: int = 0
    limited: Sequence[TypeLimits] = ()
    plain: bool = True


class ClaimedJobs(list["Job"]):
    """The jobs a claim with ``limited`` types took, in dequeue order, and why it took
    no more: ``held`` maps a type held back by its limits to the seconds until a retry
    can find room (``inf``: once one of its runs ends), ``drained`` holds the types of
    which no more jobs were due, and ``plain_drained`` says that no more jobs of other
    types were (for a claim with ``plain``)."""

    __slots__ = ("drained", "held", "plain_drained")

    def __init__(
        self,
        jobs: Sequence[Job] = (),
        held: dict[str, float] | None = None,
        drained: frozenset[str] = frozenset(),
        plain_drained: bool = False,
    ) -> None:
        super().__init__(jobs)
        self.held: dict[str, float] = {} if held is None else held
        self.drained = drained
        self.plain_drained = plain_drained


@dataclass(frozen=True, slots=True)
class Outcome:
    """A successful run to store: the job's id, the run (its ``Job.fence``) and its JSON
    result."""

    job_id: str
    fence: int
    result: bytes | None
    #: The job's parent, if it is a child: its outcome counts down the parent's wait.
    parent_id: str | None = None


class ChildOutcome(NamedTuple):
    """What a parent reads of a child it waited for: a tuple, since a fan-out's resume
    reads thousands of them at once."""

    id: str
    type: str
    status: JobStatus
    result: bytes | None
    last_error: str | None
    finished_at: datetime | None  # when it failed or was cancelled; None once completed
    parent_id: str | None


class GroupOutcomes(NamedTuple):
    """The outcomes of one wait group's children (a fan-out's), as a parent reads them
    on resuming. Children that completed with no result (run for their effect, the
    common case) are only counted in ``plain``: a fan-out of thousands then reads
    hardly any rows."""

    #: The other children's outcomes, by id.
    found: dict[str, ChildOutcome]
    #: How many children completed with no result (None from their handler).
    plain: int


@dataclass(frozen=True, slots=True)
class ChildrenWait:
    """What a parent waits for among its children: ``group`` (the path of the call that
    waits) counts ``total`` children; the wait is decided once ``needed`` succeeded, or
    more than ``tolerated`` failed, or all finished. ``ids``: children to count in this
    wait from now on (``wait_for``; a fan-out's children count in it from their insert).
    """

    group: str
    total: int
    needed: int
    tolerated: int
    ids: Sequence[str] | None = None

    def counters(self, ok: int, failed: int) -> tuple[int, int, int]:
        """What is left once ``ok`` succeeded and ``failed`` failed: children not
        finished, successes still needed, failures still tolerated."""
        return self.total - ok - failed, self.needed - ok, self.tolerated - failed


def decided(left: int, need: int, spare: int) -> bool:
    """Whether a wait with these counters left (``ChildrenWait.counters``) is decided:
    all finished, enough succeeded, or too many failed (the statements test the same)."""
    return left <= 0 or need <= 0 or spare < 0


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A schedule as the schedulers last recorded it (``spec`` as in ``Schedule.spec``)."""

    name: str
    spec: str
    queue: str
    last_fire_at: datetime | None
    next_fire_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """How many jobs of a queue are due to run, and since when the oldest has waited."""

    queue: str
    due: int
    oldest_run_at: datetime | None
