"""``sdj jobs``: list, inspect, retry and delete jobs."""

from __future__ import annotations

from typing import Annotated

import typer

from ..job import JobStatus
from ..operations import MAX_LIMIT
from ..storage.admin import Admin, Cursor
from . import render
from .database import DEFAULT_URL, DatabaseUrl, JsonFlag, get_job, open_storage
from .errors import CLIError
from .ops_cmd import attempt_dict, attempts_table, parse_meta, parse_time

__all__ = ["jobs_app"]

jobs_app = typer.Typer(help="List, inspect, retry and delete jobs.", no_args_is_help=True)

STATUSES = [status.value for status in JobStatus]


def _check_status(value: str | None) -> str | None:
    if value is not None and value not in STATUSES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(STATUSES)}")
    return value


JobId = Annotated[str, typer.Argument(help="The job's id.", show_default=False)]


def _check_meta(values: list[str] | None) -> list[str] | None:
    parse_meta(values or [])
    return values


def _check_time(value: str | None) -> str | None:
    if value is not None:
        parse_time(value)
    return value


def _cursor(token: str | None) -> Cursor | None:
    if token is None:
        return None
    try:
        return Cursor.parse(token)
    except ValueError:
        raise CLIError(f"{token!r} is not a cursor that sdj jobs list printed") from None


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
    tag: Annotated[str | None, typer.Option(help="Only jobs with this tag.")] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option(
            help="Only jobs whose meta has key=value (a string, number or true/false); repeatable.",
            callback=_check_meta,
            show_default=False,
        ),
    ] = None,
    created_after: Annotated[
        str | None,
        typer.Option(
            help="Only jobs created since: a duration ago (12h, 7d) or an ISO time (UTC).",
            callback=_check_time,
            show_default=False,
        ),
    ] = None,
    created_before: Annotated[
        str | None,
        typer.Option(
            help="Only jobs created before: a duration ago (12h, 7d) or an ISO time (UTC).",
            callback=_check_time,
            show_default=False,
        ),
    ] = None,
    after: Annotated[
        str | None,
        typer.Option(help="The cursor a previous page printed: list the page after it."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="At most this many jobs.")] = 50,
    database_url: DatabaseUrl = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first, by status, queue, type, tag, meta and creation time."""
    with open_storage(database_url) as storage:
        page = Admin(storage).jobs_page(
            status=None if status is None else JobStatus(status),
            queue=queue,
            job_type=job_type,
            tag=tag,
            meta=parse_meta(meta or []),
            created_after=None if created_after is None else parse_time(created_after),
            created_before=None if created_before is None else parse_time(created_before),
            before=_cursor(after),
            limit=limit,
        )
    following = None if page.next is None else page.next.token()
    if as_json:
        render.print_json([render.job_dict(job) for job in page.jobs])
        return
    render.console().print(render.jobs_table(page.jobs))
    if following is not None:
        typer.echo(f"more: --after {following}")


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
        attempts = storage.admin().attempts(job_id)
    if as_json:
        data = render.job_dict(job)
        data["checkpoints"] = [render.checkpoint_dict(cp) for cp in checkpoints]
        data["children"] = render.children_dict(children)
        data["attempts"] = [attempt_dict(a) for a in attempts]
        render.print_json(data)
        return
    out = render.console()
    for table in render.job_detail(job, checkpoints, children):
        out.print(table)
    if attempts:
        out.print(attempts_table(attempts))


@jobs_app.command("retry")
def retry_job(
    job_id: Annotated[
        str | None, typer.Argument(help="The job's id (or --failed).", show_default=False)
    ] = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="Retry every failed job (narrowed by the options).")
    ] = False,
    job_type: Annotated[
        str | None,
        typer.Option("--type", help="With --failed: only jobs of this type.", show_default=False),
    ] = None,
    queue: Annotated[
        str | None, typer.Option(help="With --failed: only jobs of this queue.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="With --failed: only jobs that failed since a duration ago (12h, 7d) or an"
            " ISO time (UTC).",
            callback=_check_time,
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrl = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """Run a failed, cancelled or retrying job again now, with its full retry budget;
    with --failed, every failed job (by --type, --queue, --since), in batches.

    A job becomes pending with its attempt count reset to 0. Its checkpoints are kept,
    so a workflow resumes after its last completed step; last_error and the attempt
    history stay.
    """
    if failed == (job_id is not None):
        raise CLIError("give a job id or --failed, not both nor neither")
    if not failed and (job_type or queue or since):
        raise CLIError("--type, --queue and --since narrow --failed: add --failed")
    if failed:
        _retry_failed(job_type, queue, since, database_url, as_json)
        return
    assert job_id is not None
    with open_storage(database_url) as storage:
        job = Admin(storage).retry(job_id)
        if job is None:
            status = get_job(storage, job_id).status.value  # raises for an unknown id
            raise CLIError(
                f"job {job_id} is {status}; only failed, cancelled or retrying jobs can be retried"
            )
    if as_json:
        render.print_json(render.job_dict(job))
    else:
        typer.echo(f"job {job.id} ({job.type}) is pending again on queue {job.queue!r}")


def _retry_failed(
    job_type: str | None, queue: str | None, since: str | None, url: str, as_json: bool
) -> None:
    with open_storage(url) as storage:
        count, _queues = Admin(storage).retry_failed(
            job_type=job_type, queue=queue, since=None if since is None else parse_time(since)
        )
    if as_json:
        render.print_json({"retried": count})
    else:
        typer.echo(f"{count} failed job(s) are pending again")


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
