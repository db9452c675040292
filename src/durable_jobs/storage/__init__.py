"""Storage: the protocol workers and queues rely on, and its SQL implementation.

All SQL of the library lives in this package.
"""

from .protocol import Storage
from .sql import Claim, Outcome, ScheduleState, SQLStorage, WorkerInfo
from .transient import is_transient, retry_transient

__all__ = [
    "Claim",
    "Outcome",
    "SQLStorage",
    "ScheduleState",
    "Storage",
    "WorkerInfo",
    "is_transient",
    "retry_transient",
]
