"""``sdj workers``: the worker registry, as each worker process records itself."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from ..explain import LIVE_WORKER_WINDOW
from ..job import utcnow
from ..storage import WorkerInfo
from . import render
from .database import DEFAULT_URL, DatabaseUrl, JsonFlag, open_storage

__all__ = ["workers"]


def workers(
    within: Annotated[
        float,
        typer.Option(
            "--within",
            min=0.001,
            help="List workers seen in the last this many seconds.",
        ),
    ] = LIVE_WORKER_WINDOW.total_seconds(),
    database_url: DatabaseUrl = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """Live workers: id, host, pid, queues, job types, release, start, last heartbeat and
    how many jobs each is running.

    Each worker process records itself at every heartbeat; entries of workers gone
    silent are pruned by the other workers' reapers.
    """
    with open_storage(database_url) as storage:
        found = storage.live_workers(timedelta(seconds=within))
        running = storage.explain_reads().running_by_worker()
    rows = sorted(found, key=lambda w: (w.host, w.started_at, w.id))
    if as_json:
        render.print_json([worker_dict(w, running.get(w.id, 0)) for w in rows])
    else:
        render.console().print(_table(rows, running, within))


def worker_dict(worker: WorkerInfo, running: int) -> dict[str, Any]:
    """A worker's registry entry as JSON-ready data, with its running job count."""
    return {
        "id": worker.id,
        "host": worker.host,
        "pid": worker.pid,
        "queues": worker.queues,
        "types": worker.types,
        "version": worker.version or None,
        "started_at": worker.started_at.isoformat(),
        "last_seen": worker.heartbeat_at.isoformat(),
        "running": running,
    }


def _table(rows: Sequence[WorkerInfo], running: dict[str, int], within: float) -> Table:
    title = f"{len(rows)} worker(s) seen in the last {render.duration(timedelta(seconds=within))}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE)
    for name in ("ID", "HOST", "PID", "QUEUES", "TYPES", "VERSION", "STARTED (UTC)", "LAST SEEN"):
        table.add_column(
            name, no_wrap=name in ("ID", "PID"), justify="right" if name == "PID" else "left"
        )
    table.add_column("RUNNING", justify="right")
    now = utcnow()
    for w in rows:
        table.add_row(
            w.id,
            w.host,
            str(w.pid),
            ", ".join(w.queues),
            ", ".join(w.types) or "-",
            w.version or "-",
            render.timestamp(w.started_at),
            f"{render.duration(max(now - w.heartbeat_at, timedelta(0)))} ago",
            str(running.get(w.id, 0)),
        )
    if not rows:
        table.caption = "no live workers"
    return table
