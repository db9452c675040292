"""``sdj explain ID``: why a job is (not) running, in a sentence and the facts behind it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from ..explain import ExplainReason, Explanation, explain_job
from ..options import Limits
from ..queue import Queue
from . import render
from .database import DEFAULT_URL, DatabaseUrl, JsonFlag, open_storage
from .errors import CLIError
from .loader import load_queue

__all__ = ["explain"]


def explain(
    job_id: Annotated[str, typer.Argument(help="The job's id.", show_default=False)],
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="[MODULE:QUEUE]",
            help="Your Queue: its handlers' concurrency caps and rate limits are checked too.",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrl = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """Why a job is (not) running: the first reason that holds, and the facts behind it.

    In order: finished, paused (the job or its queue), waiting, delayed, held by a
    concurrency cap or rate limit (with MODULE:QUEUE, which declares them), no live
    worker serving its queue or knowing its type, running, or next in line.
    """
    queue = load_queue(target) if target else None
    with open_storage(database_url) as storage:
        found = explain_job(storage, job_id, _limits_of(queue))
    if found.reason is ExplainReason.NOT_FOUND:
        raise CLIError(f"no job with id {job_id!r}")
    if as_json:
        render.print_json(found.to_dict())
        return
    typer.echo(f"job {found.job_id}: {found.message}")
    for line in _fact_lines(found):
        typer.echo(f"  {line}")


def _limits_of(queue: Queue | None) -> Callable[[str], Limits | None]:
    def limits(job_type: str) -> Limits | None:
        handler = None if queue is None else queue.handler(job_type)
        return None if handler is None else handler.limits

    return limits


def _fact_lines(found: Explanation) -> list[str]:
    data = found.to_dict()
    lines = [f"reason: {data['reason']}"]
    for name, value in data["facts"].items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        if value is not None:
            lines.append(f"{name}: {value}")
    return lines
