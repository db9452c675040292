"""Job control's costs: an enqueue with a unique key against a plain enqueue."""

from __future__ import annotations

import itertools
import time

from .database import database, queue_on
from .report import Figure, Result
from .sizes import Sizes, count

__all__ = ["unique_enqueue"]


def unique_enqueue(backend: str, sizes: Sizes, rounds: int = 10) -> Result:
    """``enqueue`` with a fresh ``unique_key`` each time against plain ``enqueue``, on the
    same database, alternating in rounds (and in which goes first) so that load from
    elsewhere on the machine falls on both alike."""
    per_round = max(1, sizes.enqueue // rounds)
    n = per_round * rounds
    keys = itertools.count()
    with database(backend) as url, queue_on(url) as queue:

        def plain(k: int) -> float:
            start = time.perf_counter()
            for _ in range(k):
                queue.enqueue("noop")
            return time.perf_counter() - start

        def unique(k: int) -> float:
            start = time.perf_counter()
            for _ in range(k):
                queue.enqueue("noop", unique_key=f"key-{next(keys)}")
            return time.perf_counter() - start

        plain(20)  # warm both up: connections, prepared statements
        unique(20)
        plain_s = unique_s = 0.0
        for r in range(rounds):
            if r % 2:
                unique_s += unique(per_round)
                plain_s += plain(per_round)
            else:
                plain_s += plain(per_round)
                unique_s += unique(per_round)
    label = f"enqueue {count(n)} one at a time"
    return Result(
        backend,
        "unique-enqueue",
        [
            Figure("ref.enqueue", f"{label}, plain", n / plain_s, "jobs/s"),
            Figure(
                "unique_enqueue",
                f"{label}, each with a unique key",
                n / unique_s,
                "jobs/s",
                ceiling="ref.enqueue",
            ),
        ],
    )
