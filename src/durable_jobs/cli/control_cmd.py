"""``sdj cancel``, ``sdj pause`` and ``sdj resume``: job control from the shell."""

from __future__ import annotations

from typing import Annotated

import typer

from ..options import check_queue_name
from ..storage import SQLStorage
from . import render
from .database import DEFAULT_URL, DatabaseUrl, JsonFlag, get_job, open_storage
from .errors import CLIError

__all__ = ["cancel", "pause", "resume"]

OptionalJobId = Annotated[
    str | None, typer.Argument(help="The job's id (or give --queue).", show_default=False)
]
QueueName = Annotated[
    str | None,
    typer.Option(
        "--queue", help="A whole queue, for every worker of every host.", show_default=False
    ),
]


def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.", show_default=False)],
    database_url: DatabaseUrl = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """Cancel a job with all its unfinished descendants.

    A running handler is told to stop (within a second, wherever it runs); whatever its
    run returns after, the job stays cancelled.
    """
    with open_storage(database_url) as storage:
        cancelled = storage.cancel(job_id)
        if cancelled is None:
            raise CLIError(f"no job with id {job_id!r}")
        ids = [job.id for job in cancelled]
        if job_id not in ids:
            status = get_job(storage, job_id).status.value
            if not ids:
                raise CLIError(f"job {job_id} is {status}: only unfinished jobs can be cancelled")
    if as_json:
        render.print_json({"id": job_id, "cancelled": ids})
        return
    others = len([i for i in ids if i != job_id])
    children = f" and {others} descendant(s)" if others else ""
    if job_id in ids:
        typer.echo(f"cancelled job {job_id}{children}")
    else:
        typer.echo(f"job {job_id} had finished ({status}); cancelled {others} descendant(s)")


def pause(
    job_id: OptionalJobId = None,
    queue: QueueName = None,
    database_url: DatabaseUrl = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """Hold a job (or with --queue, a whole queue) until `sdj resume`.

    A job that is not running is not claimed; a running or waiting one is held once it
    would run again. A paused queue is claimed from by no worker; running jobs finish.
    """
    with open_storage(database_url) as storage:
        _control(storage, job_id, queue, pausing=True, as_json=as_json)


def resume(
    job_id: OptionalJobId = None,
    queue: QueueName = None,
    database_url: DatabaseUrl = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """Undo `sdj pause` of a job (or with --queue, of a queue)."""
    with open_storage(database_url) as storage:
        _control(storage, job_id, queue, pausing=False, as_json=as_json)


def _control(
    storage: SQLStorage, job_id: str | None, queue: str | None, *, pausing: bool, as_json: bool
) -> None:
    verb = "pause" if pausing else "resume"
    if job_id is None and queue is None:
        raise CLIError(f"give a job id or --queue NAME to {verb}")
    if job_id is not None and queue is not None:
        raise CLIError(f"give a job id or --queue NAME to {verb}, not both")
    if queue is not None:
        try:
            name = check_queue_name(queue)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        (storage.pause_queue if pausing else storage.resume_queue)(name)
        paused = name in storage.paused_queues()
        if as_json:
            render.print_json({"queue": name, "paused": paused})
        else:
            typer.echo(f"queue {name!r} {'paused' if paused else 'resumed'}")
        return
    assert job_id is not None
    changed = (storage.pause if pausing else storage.resume)(job_id)
    job = get_job(storage, job_id)  # raises for an unknown id
    if not changed:
        why = "is not paused" if not pausing else f"is {job.status.value}"
        if pausing and job.paused_from is not None:
            why = "is paused already"
        raise CLIError(f"job {job_id} {why}: nothing to {verb}")
    if as_json:
        render.print_json(render.job_dict(job))
    elif pausing and job.status.value != "paused":
        typer.echo(f"job {job_id} is {job.status.value}: it is held once it would run again")
    else:
        typer.echo(f"job {job_id} is {job.status.value}")
