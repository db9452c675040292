"""Figures, and the table that prints them beside their targets and ceilings."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .targets import CEILING, TARGETS, Target

__all__ = ["Figure", "Result", "latency_figures", "number", "percentile", "render_table"]


@dataclass(frozen=True)
class Figure:
    """One measured number. ``ceiling`` is the key of the reference that bounds it."""

    key: str
    label: str
    value: float
    unit: str
    ceiling: str | None = None


@dataclass
class Result:
    """What one workload produced on one backend: figures, notes, or the error it raised."""

    backend: str
    workload: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def percentile(samples: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]


def latency_figures(
    key: str, where: str, waits_ms: Sequence[float], idle_commit_ms: float
) -> list[Figure]:
    """The p50 and p99 figures (``key``.p50, ``key``.p99) of latency samples in ms, and
    the idle commit they are compared with."""
    median = statistics.median(waits_ms)
    return [
        Figure(f"ref.idle.{key}", "bare INSERT commit after idling, p50", idle_commit_ms, "ms"),
        Figure(f"{key}.p50", f"idle latency p50, {where}", median, "ms", f"ref.idle.{key}"),
        Figure(f"{key}.p99", f"idle latency p99, {where}", percentile(waits_ms, 99), "ms"),
    ]


# Short names of the references, for the ceiling column.
CEILING_NAMES = {
    "ref.insert": "bare INSERT",
    "ref.claim": "claim-complete",
    "ref.bulk": "bare bulk",
    "ref.idle.latency.same": "idle commit",
    "ref.idle.latency.other": "idle commit",
    "ref.fanout.drain": "plain drain",
    "ref.limits.work": "plain drain",
    "ref.limits.noop": "plain drain",
    "ref.enqueue": "plain enqueue",
    "ref.latency.sleep": "enqueue-to-start",
    "ref.latency.signal": "enqueue-to-start",
    "ref.latency.signal.other": "enqueue-to-start",
    "ref.prune.disk": "disk flush",
    "ref.prune.other.disk": "disk flush",
}

HEADER = (
    "backend",
    "workload",
    "figure",
    "unit",
    "target",
    "fig/target",
    "met",
    "ceiling",
    "ceiling figure",
    "fig/ceiling",
)
_RIGHT = {"figure", "fig/target", "ceiling figure", "fig/ceiling"}


def number(value: float) -> str:
    """A figure with as many decimals as its size deserves."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _row(backend: str, figure: Figure, known: dict[str, Figure]) -> list[str]:
    ceiling = known.get(figure.ceiling) if figure.ceiling else None
    target = TARGETS.get(figure.key, {}).get(backend)
    goal = _goal(target, known, ceiling) if target else None
    cells = [backend, figure.label, number(figure.value), figure.unit]
    if target is None:
        cells += ["-", "-", "-"]
    elif goal is None:  # relative to a figure this run did not measure
        cells += [target.text(), "-", "-"]
    else:
        met = "yes" if target.met(figure.value, goal) else "NO"
        cells += [target.text(), f"{figure.value / goal:.2f}", met]
    if ceiling is None:
        cells += ["-", "-", "-"]
    else:
        cells += [
            CEILING_NAMES.get(ceiling.key, ceiling.label),
            f"{number(ceiling.value)} {ceiling.unit}",
            f"{figure.value / ceiling.value:.2f}",
        ]
    return cells


def _goal(target: Target, known: dict[str, Figure], ceiling: Figure | None) -> float | None:
    """The target as an absolute number, or None if its basis was not measured."""
    if target.of is None:
        return target.value
    basis = ceiling if target.of == CEILING else known.get(target.of)
    return None if basis is None else target.value * basis.value


def render_table(results: Sequence[Result]) -> str:
    """One table of every figure (and failed workload), backends in the order run."""
    rows: list[list[str]] = []
    for backend in dict.fromkeys(r.backend for r in results):
        mine = [r for r in results if r.backend == backend]
        known = {f.key: f for r in mine for f in r.figures}
        for result in mine:
            rows += [_row(backend, f, known) for f in result.figures]
            if result.error is not None:
                rows.append([backend, result.workload, "FAILED"] + ["-"] * (len(HEADER) - 3))
    widths = [max(len(row[i]) for row in [list(HEADER), *rows]) for i in range(len(HEADER))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if name in _RIGHT else cell.ljust(w)
            for cell, w, name in zip(cells, widths, HEADER, strict=True)
        ).rstrip()

    rule = "-" * len(line(["-" * w for w in widths]))
    return "\n".join([line(HEADER), rule, *(line(row) for row in rows)])
