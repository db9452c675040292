"""The bounded hand-off from a worker's completer to its reporter (hooks, events, logs).

Outcomes are reported after they are stored, on another thread, so that hooks never
delay the next commit. Slow hooks must not let committed outcomes pile up without
limit, though: once the backlog is full the completer waits for room, which holds back
storing and claiming until the hooks catch up (a slow hook slows its worker, as the
docs say, instead of filling its memory).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Backlog"]

T = TypeVar("T")


class Backlog(Generic[T]):
    """A FIFO of batches bounded by unhandled items and by size; ``close`` ends it.

    A batch is accepted while the backlog is under both bounds, so it may exceed them by
    one batch: the completer never has to split what one commit stored.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._batches: deque[tuple[Sequence[T], int] | None] = deque()
        self._items = 0
        self._bytes = 0
        self._cond = threading.Condition()

    @property
    def pending(self) -> int:
        """Items put and not yet handled."""
        with self._cond:
            return self._items

    def put(self, batch: Sequence[T], size: int, give_up_at: Callable[[], float]) -> None:
        """Add ``batch`` of ``size`` bytes, waiting for room until ``give_up_at()`` (a
        ``time.monotonic()`` value, read again after ``wake``; after it, add at once)."""
        with self._cond:
            while self._full():
                left = give_up_at() - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
            self._batches.append((batch, size))
            self._items += len(batch)
            self._bytes += size
            self._cond.notify_all()

    def close(self) -> None:
        """Mark the end: ``get`` returns None once the batches before it are taken."""
        with self._cond:
            self._batches.append(None)
            self._cond.notify_all()

    def get(self) -> Sequence[T] | None:
        """The oldest batch, waiting for one; None at the end. Its items count as
        pending until ``done`` says they are handled."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._batches))
            entry = self._batches.popleft()
            if entry is None:
                return None
            batch, size = entry
            self._bytes -= size  # the consumer holds the batch anyway
            self._cond.notify_all()
            return batch

    def done(self, count: int = 1) -> None:
        """``count`` items taken with ``get`` are handled."""
        with self._cond:
            self._items -= count
            self._cond.notify_all()

    def wake(self) -> None:
        """Make a waiting ``put`` look at its deadline again (it was moved earlier)."""
        with self._cond:
            self._cond.notify_all()

    def _full(self) -> bool:
        return self._items >= self._max_items or self._bytes >= self._max_bytes
