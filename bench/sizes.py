"""How much work each workload does, in the full run and in the quick (CI) run."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CONCURRENCY", "FULL", "QUICK", "Sizes", "count", "drain_timeout"]

#: Every worker's concurrency on queue ``default``.
CONCURRENCY = 10


@dataclass(frozen=True)
class Sizes:
    """Jobs, rows or samples per workload."""

    drain: int = 10_000
    #: Drains per figure, alternating where two are compared; the median is reported.
    drain_rounds: int = 3
    enqueue: int = 2_000
    enqueue_many: int = 20_000
    workflows: int = 500
    latency_samples: int = 200
    filler: int = 1_000_000
    memory_jobs: int = 200_000
    memory_baseline: int = 20_000
    claim_ceiling: int = 5_000
    #: Children of the one parent of the fan-out (and jobs of its reference drain).
    fan_out: int = 10_000
    #: Sleeps of the sleep-lateness workload, one at a time.
    sleepers: int = 100
    #: Signals of the signal-latency workload, one at a time.
    signal_samples: int = 200
    #: Jobs of each drain of the limits-drain workload (capped, rate-limited, plain).
    limits_drain: int = 10_000
    #: Jobs in the table searched by list-jobs, and pruned by prune-while-draining.
    ops_rows: int = 1_000_000


FULL = Sizes()
QUICK = Sizes(
    drain=5_000,
    drain_rounds=1,
    enqueue=1_000,
    workflows=100,
    latency_samples=100,
    filler=100_000,
    memory_jobs=20_000,
    memory_baseline=2_000,
    claim_ceiling=2_000,
    fan_out=2_000,
    sleepers=30,
    signal_samples=50,
    limits_drain=2_000,
    ops_rows=20_000,
)


def count(n: int) -> str:
    """10000 as "10k", 1000000 as "1M"."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return f"{n:,}"


def drain_timeout(jobs: int) -> float:
    """Seconds to allow for ``jobs`` jobs: a timeout means "stuck", not "slow"."""
    return 60 + jobs / 100
