"""``sdj jobs``: list, inspect, retry and delete jobs."""

from __future__ import annotations

from typing import Annotated

import typer

from ..job import JobStatus
from ..storage.admin import Admin
from . import render
from .database import DEFAULT_URL, DatabaseUrl, JsonFlag, get_job, open_storage
from .errors import CLIError

__all__ = ["jobs_app"]

jobs_app = typer.Typer(help="List, inspect, retry and delete jobs.", no_args_is_help=True)

STATUSES = [status.value for status in JobStatus]


def _check_status(value: str | None) -> str | None:
    if value is not None and value not in STATUSES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(STATUSES)}")
    return value


JobId = Annotated[str, typer.Argument(help="The job's id.", show_default=False)]


@jobs_app.command("list")
def list_jobs(
    status: Annotated[
        str | None,
        typer.Option(
            help=f"Only jobs with this status: {', '.join(STATUSES)}.",
            callback=_check_status,
            show_default=False,
        ),
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Only jobs of this queue.")] = None,
    job_type: Annotated[
        str | None, typer.Option("--type", help="Only jobs of this type.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs.")] = 50,
    database_url: DatabaseUrl = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    with open_storage(database_url) as storage:
        wanted = None if status is None else JobStatus(status)
        page = Admin(storage).jobs_page(status=wanted, queue=queue, job_type=job_type, limit=limit)
        jobs = page.jobs
    if as_json:
        render.print_json([render.job_dict(job) for job in jobs])
    else:
        render.console().print(render.jobs_table(jobs))


@jobs_app.command("show")
def show_job(
    job_id: JobId, database_url: DatabaseUrl = DEFAULT_URL, as_json: JsonFlag = False
) -> None:
    """Show one job with its checkpoints (the saved results of its durable calls) and
    its children (the jobs it spawned or fanned out), counted live."""
    with open_storage(database_url) as storage:
        job = get_job(storage, job_id)
        checkpoints = storage.get_checkpoints(job_id)
        children = storage.admin().children(job_id)
    if as_json:
        data = render.job_dict(job)
        data["checkpoints"] = [render.checkpoint_dict(cp) for cp in checkpoints]
        data["children"] = render.children_dict(children)
        render.print_json(data)
        return
    out = render.console()
    for table in render.job_detail(job, checkpoints, children):
        out.print(table)


@jobs_app.command("retry")
def retry_job(
    job_id: JobId, database_url: DatabaseUrl = DEFAULT_URL, as_json: JsonFlag = False
) -> None:
    """Run a failed or retrying job again now, with its full retry budget.

    The job becomes pending with its attempt count reset to 0. Its checkpoints are kept,
    so a workflow resumes after its last completed step; last_error stays until the
    next run.
    """
    with open_storage(database_url) as storage:
        job = Admin(storage).retry(job_id)
        if job is None:
            status = get_job(storage, job_id).status.value  # raises for an unknown id
            raise CLIError(f"job {job_id} is {status}; only failed or retrying jobs can be retried")
    if as_json:
        render.print_json(render.job_dict(job))
    else:
        typer.echo(f"job {job.id} ({job.type}) is pending again on queue {job.queue!r}")


@jobs_app.command("delete")
def delete_job(
    job_id: JobId,
    force: Annotated[
        bool, typer.Option("--force", help="Delete a running job too (its worker goes on).")
    ] = False,
    database_url: DatabaseUrl = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """Delete a job and its checkpoints. A running job needs --force."""
    with open_storage(database_url) as storage:
        job = Admin(storage).delete(job_id, force=force)
        if job is None:
            get_job(storage, job_id)  # raises for an unknown id
            raise CLIError(f"job {job_id} is running; pass --force to delete it anyway")
    if as_json:
        render.print_json(render.job_dict(job))
    else:
        typer.echo(f"deleted job {job.id} ({job.type}, {job.status.value})")
