"""Output: Rich tables for people, JSON for scripts. No database access."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from ..job import Checkpoint, Job, JobStatus, utcnow
from ..storage import ScheduleState
from ..storage.admin import Children, QueueStats

__all__ = [
    "checkpoint_dict",
    "children_dict",
    "console",
    "duration",
    "job_detail",
    "job_dict",
    "jobs_table",
    "print_json",
    "records_table",
    "schedule_dict",
    "stats_dict",
    "stats_table",
    "status_text",
    "timestamp",
]

PIPE_WIDTH = 200
STATUS_STYLES = {
    JobStatus.PENDING: "white",
    JobStatus.RUNNING: "cyan",
    JobStatus.COMPLETED: "green",
    JobStatus.FAILED: "red",
    JobStatus.RETRYING: "yellow",
    JobStatus.WAITING: "magenta",
    JobStatus.PAUSED: "blue",
    JobStatus.CANCELLED: "bright_black",
}


def console() -> Console:
    """A console on the current stdout (made per call so test runners can capture it).

    Output to a pipe or file gets wide lines rather than Rich's default of 80 columns,
    so tables stay whole for grep and friends.
    """
    out = Console(highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = PIPE_WIDTH
    return out


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout."""
    typer.echo(json.dumps(data, indent=2, default=str))


# --- values ---------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _json_value(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


def timestamp(value: datetime | None) -> str:
    """A UTC time to the second, or a dash."""
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def duration(value: timedelta) -> str:
    """``"850ms"``, ``"12.3s"``, ``"4m05s"`` or ``"3h12m"``."""
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _relative(value: datetime) -> str:
    """``"in 4m05s"`` or ``"12.3s ago"``."""
    delta = value - utcnow()
    return f"in {duration(delta)}" if delta >= timedelta(0) else f"{duration(-delta)} ago"


def status_text(status: JobStatus) -> str:
    """The status in its colour, as Rich markup."""
    return f"[{STATUS_STYLES[status]}]{status.value}[/]"


def _first_line(text: str | None) -> str:
    return text.splitlines()[0] if text else ""


# --- jobs -----------------------------------------------------------------------------


def job_dict(job: Job) -> dict[str, Any]:
    """A job as JSON-ready data; ``args`` and ``result`` decoded."""
    return {
        "id": job.id,
        "type": job.type,
        "queue": job.queue,
        "status": job.status.value,
        "priority": job.priority,
        "attempt": job.attempt,
        "max_retries": job.max_retries,
        "args": _json_value(job.args),
        "result": _json_value(job.result),
        "last_error": job.last_error,
        "run_at": _iso(job.run_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.completed_at),
        "finished_at": _iso(job.finished_at),
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "locked_by": job.locked_by,
        "finished_by": job.finished_by,
        "heartbeat_at": _iso(job.heartbeat_at),
        "parent_id": job.parent_id,
        "unique_key": job.unique_key,
        "tags": job.tags,
        "meta": job.meta,
        "timeout": None if job.timeout is None else job.timeout.total_seconds(),
        "paused_from": job.paused_from,
        "progress": job.progress,
        "waiting_for": job.waiting_for,
        "wait_until": _iso(job.wait_until),
        "traceback": job.traceback,
    }


def checkpoint_dict(cp: Checkpoint) -> dict[str, Any]:
    """A checkpoint as JSON-ready data."""
    return {
        "call_index": cp.call_index,
        "scope": cp.scope,
        "call_type": cp.call_type,
        "result": _json_value(cp.result),
        "error": cp.error,
        "created_at": _iso(cp.created_at),
    }


def children_dict(children: Children) -> dict[str, Any]:
    """A job's children as JSON-ready data: counts by status and the first ones."""
    return {
        "total": children.total,
        "finished": children.finished,
        "by_status": {status.value: n for status, n in sorted(children.by_status.items())},
        "first": [{"id": c.id, "type": c.type, "status": c.status.value} for c in children.first],
    }


def _children_table(children: Children) -> Table:
    counts = ", ".join(f"{n} {status.value}" for status, n in sorted(children.by_status.items()))
    title = f"children: {children.finished} of {children.total} finished ({counts})"
    table = Table(title=title, title_justify="left", box=box.SIMPLE)
    for name in ("ID", "TYPE", "STATUS", "LAST ERROR"):
        table.add_column(name, no_wrap=name == "ID")
    for child in children.first:
        table.add_row(
            child.id, child.type, status_text(child.status), _first_line(child.last_error)
        )
    if len(children.first) < children.total:
        table.caption = f"the first {len(children.first)} of {children.total}"
    return table


def jobs_table(jobs: Sequence[Job]) -> Table:
    """One row per job, in the order given; full ids, to copy into other commands."""
    table = Table(title=f"{len(jobs)} job(s)", title_justify="left", box=box.SIMPLE)
    table.add_column("ID", no_wrap=True, min_width=36)
    table.add_column("TYPE", min_width=8)
    table.add_column("QUEUE", min_width=7)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("RUNS", justify="right", no_wrap=True)
    table.add_column("PRIO", justify="right")
    table.add_column("RUN AT (UTC)")
    table.add_column("LAST ERROR", no_wrap=True, overflow="ellipsis")
    for job in jobs:
        table.add_row(
            job.id,
            job.type,
            job.queue,
            status_text(job.status),
            f"{job.attempt}/{job.max_retries + 1}",
            str(job.priority),
            timestamp(job.run_at),
            _first_line(job.last_error),
        )
    return table


def job_detail(
    job: Job, checkpoints: Sequence[Checkpoint], children: Children | None = None
) -> list[Table]:
    """A job's fields, then its traceback, checkpoints and children (if any)."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    for key, value in job_dict(job).items():
        if key == "traceback":
            continue  # its own table, below
        if key == "status":
            shown = status_text(job.status)
        elif key in ("args", "result") or (key in ("progress", "meta", "tags") and value):
            shown = json.dumps(value)
        elif key == "wait_until" and job.wait_until is not None:
            shown = f"{timestamp(job.wait_until)} UTC ({_relative(job.wait_until)})"
        else:
            shown = "-" if value is None else str(value)
        fields.add_row(key, shown)
    tables = [fields]
    if job.traceback:
        traceback = Table(title="traceback of the last failed run", title_justify="left")
        traceback.add_column(no_wrap=True, overflow="fold", header="")
        traceback.add_row(job.traceback.rstrip())
        tables.append(traceback)
    if checkpoints:
        steps = Table(title="checkpoints", title_justify="left")
        for name in ("CALL", "STEP", "RESULT", "ERROR", "SAVED (UTC)"):
            steps.add_column(name)
        for cp in checkpoints:
            call = f"{cp.scope}.{cp.call_index}" if cp.scope else str(cp.call_index)
            steps.add_row(
                call,
                cp.call_type,
                _first_line(None if cp.result is None else cp.result.decode()),
                _first_line(cp.error),
                timestamp(cp.created_at),
            )
        tables.append(steps)
    if children is not None and children.total:
        tables.append(_children_table(children))
    return tables


# --- stats and records ----------------------------------------------------------------


def stats_dict(stats: Sequence[QueueStats], workers: int) -> dict[str, Any]:
    """Per-queue counts (every status present, zeros included) and live workers."""
    return {
        "queues": {
            s.queue: {
                **{status.value: s.counts.get(status, 0) for status in JobStatus},
                "oldest_due_seconds": (
                    None if s.oldest_due is None else round(s.oldest_due.total_seconds(), 3)
                ),
            }
            for s in stats
        },
        "live_workers": workers,
    }


def stats_table(stats: Sequence[QueueStats], workers: int) -> Table:
    """One row per queue, a column per status, and the wait of the oldest due job."""
    table = Table(title=f"{workers} live worker(s)", title_justify="left")
    table.add_column("QUEUE")
    for status in JobStatus:
        table.add_column(status_text(status), justify="right")
    table.add_column("OLDEST DUE", justify="right")
    for s in stats:
        table.add_row(
            s.queue,
            *(str(s.counts.get(status, 0)) for status in JobStatus),
            "-" if s.oldest_due is None else duration(s.oldest_due),
        )
    if not stats:
        table.caption = "no jobs"
    return table


def schedule_dict(state: ScheduleState) -> dict[str, Any]:
    """A stored schedule state as JSON-ready data, keyed like its table's columns."""
    return {
        "name": state.name,
        "spec": state.spec,
        "queue": state.queue,
        "last_fire_at": _iso(state.last_fire_at),
        "next_fire_at": _iso(state.next_fire_at),
        "updated_at": _iso(state.updated_at),
    }


def records_table(title: str, rows: Sequence[dict[str, Any]]) -> Table:
    """Rows of any shape, a column per key of the first row."""
    table = Table(title=title, title_justify="left")
    columns = list(rows[0]) if rows else []
    for column in columns:
        table.add_column(column.upper())
    for row in rows:
        table.add_row(*("-" if row.get(c) is None else str(row.get(c)) for c in columns))
    return table
