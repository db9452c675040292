"""The performance targets, one per figure and backend.

A target is absolute (jobs/s, ms, MB) or relative to another figure of the same run on
the same backend: the row's ceiling, or another workload (two processes against one).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CEILING", "LIST_SEARCHES", "TARGETS", "Target"]

#: The searches of the list-jobs workload, each a figure ``list.<name>``.
LIST_SEARCHES = ("tag", "meta", "tag.failed", "failed.type", "any")

#: ``Target.of`` for "relative to the ceiling this row is printed beside".
CEILING = "ceiling"


@dataclass(frozen=True)
class Target:
    """At least (or at most) ``value``, or ``value`` times the figure keyed ``of``."""

    value: float
    at_most: bool = False
    of: str | None = None
    of_name: str = ""

    def text(self) -> str:
        sign = "<=" if self.at_most else ">="
        if self.of is None:
            return f"{sign} {self.value:,g}"
        return f"{sign} {self.value:g}x {self.of_name or self.of}"

    def met(self, figure: float, goal: float) -> bool:
        """Whether ``figure`` meets ``goal`` (the target as an absolute number)."""
        return figure <= goal if self.at_most else figure >= goal


def _both(target: Target) -> dict[str, Target]:
    return {"postgresql": target, "sqlite": target}


# Keys are the figures' keys (see ``workloads.py``).
TARGETS: dict[str, dict[str, Target]] = {
    "drain": {"postgresql": Target(8_000), "sqlite": Target(10_000)},
    "drain.1proc": {"postgresql": Target(8_000), "sqlite": Target(10_000)},
    "drain.2proc": {
        "postgresql": Target(1.5, of="drain.1proc", of_name="1 process"),
        # Never slower: SQLite's writers take turns on one lock, so a second process
        # adds no throughput, only contention.
        "sqlite": Target(1.0, of="drain.1proc", of_name="1 process"),
    },
    "drain.big": _both(Target(0.8, of="drain", of_name="small-table drain")),
    "enqueue": _both(Target(0.9, of=CEILING, of_name="ceiling")),
    "enqueue_many": {"postgresql": Target(120_000), "sqlite": Target(150_000)},
    "workflows": {"postgresql": Target(1_500), "sqlite": Target(3_000)},
    "latency.same.p50": _both(Target(0.5, at_most=True)),
    "latency.other.p50": {
        "postgresql": Target(1.5, at_most=True),
        "sqlite": Target(3, at_most=True),
    },
    "latency.other.p99": {
        "postgresql": Target(4, at_most=True),
        "sqlite": Target(10, at_most=True),
    },
    "fanout": _both(Target(0.7, of=CEILING, of_name="drain")),
    "sleep.late.p50": _both(Target(5, at_most=True)),
    "sleep.late.p99": _both(Target(20, at_most=True)),
    "signal.p50": _both(Target(1.5, at_most=True, of=CEILING, of_name="enqueue-to-start")),
    "signal.other.p50": _both(Target(1.5, at_most=True, of=CEILING, of_name="enqueue-to-start")),
    # A unique-key enqueue costs at most 1.3x a plain one: its rate is at least 1/1.3 of it.
    "unique_enqueue": _both(Target(0.77, of=CEILING, of_name="plain enqueue")),
    "limits.capped": _both(Target(0.8, of=CEILING, of_name="plain drain")),
    "limits.rated": _both(Target(0.8, of=CEILING, of_name="plain drain")),
    "rss.rest": _both(Target(80, at_most=True)),
    "rss.growth": _both(Target(10, at_most=True)),
    # Operations: a filtered first page within 50 ms, and no drain stall over 100 ms.
    **{f"list.{name}": _both(Target(50, at_most=True)) for name in LIST_SEARCHES},
    "prune.stall": _both(Target(100, at_most=True)),
    "prune.other.stall": _both(Target(100, at_most=True)),
}
