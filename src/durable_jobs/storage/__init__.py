"""Storage: the protocol workers and queues rely on, and its SQL implementation.

All SQL of the library lives in this package.
"""

from .protocol import JobStore, Listener, Storage
from .records import ChildrenWait, Claim, Outcome, QueueDepth, ScheduleState, WorkerInfo
from .sql import SQLStorage
from .transient import is_transient, retry_transient

__all__ = [
    "ChildrenWait",
    "Claim",
    "JobStore",
    "Listener",
    "Outcome",
    "QueueDepth",
    "SQLStorage",
    "ScheduleState",
    "Storage",
    "WorkerInfo",
    "is_transient",
    "retry_transient",
]
