"""The throughput chart as plain geometry, drawn as inline SVG by the overview template.

Rendered on the server, so the page needs no charting library and no build step.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..storage.admin import Minute, failure_rate

__all__ = ["Bar", "Chart", "throughput_chart"]

WIDTH = 600
HEIGHT = 150


@dataclass(frozen=True, slots=True)
class Bar:
    """One minute: completed jobs stacked under failed ones, and a tooltip."""

    x: float
    width: float
    completed_y: float
    completed_h: float
    failed_y: float
    failed_h: float
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    """Bars of finished jobs per minute and a polyline of the failure rate (0-100 %)."""

    width: int
    height: int
    bars: list[Bar]
    rate_points: list[tuple[float, float]]
    peak: int
    completed: int
    failed: int

    @property
    def failure_rate(self) -> float | None:
        """Failed / finished over the whole window, or None when nothing finished."""
        return failure_rate(self.completed, self.failed)


def throughput_chart(minutes: list[Minute]) -> Chart:
    """Chart geometry for ``minutes`` (oldest first); bars scale to the busiest minute."""
    slot = WIDTH / max(len(minutes), 1)
    peak = max((m.completed + m.failed for m in minutes), default=0)
    scale = HEIGHT / peak if peak else 0.0
    bars: list[Bar] = []
    points: list[tuple[float, float]] = []
    for i, m in enumerate(minutes):
        x = i * slot
        completed_h, failed_h = m.completed * scale, m.failed * scale
        rate = m.failure_rate
        label = f"{m.start:%H:%M} UTC: {m.completed} completed, {m.failed} failed"
        if rate is not None:
            label += f" ({rate:.0%} failed)"
            points.append((round(x + slot / 2, 1), round(HEIGHT - rate * HEIGHT, 1)))
        bars.append(
            Bar(
                x=round(x + slot * 0.1, 1),
                width=round(slot * 0.8, 1),
                completed_y=round(HEIGHT - completed_h, 1),
                completed_h=round(completed_h, 1),
                failed_y=round(HEIGHT - completed_h - failed_h, 1),
                failed_h=round(failed_h, 1),
                title=label,
            )
        )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        bars=bars,
        rate_points=points,
        peak=peak,
        completed=sum(m.completed for m in minutes),
        failed=sum(m.failed for m in minutes),
    )
