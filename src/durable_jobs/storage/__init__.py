"""Storage: the protocol workers and queues rely on, and its SQL implementation.

All SQL of the library lives in this package.
"""

from .protocol import JobStore, Listener, Storage
from .records import (
    ChildOutcome,
    ChildrenWait,
    Claim,
    ClaimedJobs,
    GroupOutcomes,
    Outcome,
    QueueDepth,
    ScheduleState,
    TypeLimits,
    WorkerInfo,
)
from .sql import SQLStorage
from .transient import is_transient, retry_transient

__all__ = [
    "ChildOutcome",
    "ChildrenWait",
    "Claim",
    "ClaimedJobs",
    "GroupOutcomes",
    "JobStore",
    "Listener",
    "Outcome",
    "QueueDepth",
    "SQLStorage",
    "ScheduleState",
    "Storage",
    "TypeLimits",
    "WorkerInfo",
    "is_transient",
    "retry_transient",
]
