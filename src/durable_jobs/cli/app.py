"""The ``sdj`` command: its root and the small commands; bigger ones have their own module."""

from __future__ import annotations

import json
import math
import os
from datetime import timedelta
from typing import Annotated, Any

import typer

from .. import __version__
from ..job import utcnow
from ..queue import Queue
from ..storage.admin import Admin
from . import render
from .control_cmd import cancel, pause, resume
from .dashboard_cmd import dashboard
from .database import DEFAULT_URL, DatabaseUrl, JsonFlag, get_job, open_storage
from .demo import demo
from .errors import CLIError, FriendlyErrors
from .explain_cmd import explain
from .jobs_cmd import jobs_app
from .loader import load_queue
from .ops_cmd import prune
from .worker_cmd import worker
from .workers_cmd import workers

__all__ = ["app"]

# A worker heartbeats every lock_timeout / 5; this covers lock timeouts up to 5 minutes.
LIVE_WORKER_WINDOW = timedelta(seconds=60)

app = typer.Typer(
    cls=FriendlyErrors,
    name="sdj",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"sdj (simple-durable-jobs) {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version."),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", envvar="SDJ_DEBUG", help="Show the traceback of a failure, and debug logs."
        ),
    ] = False,
) -> None:
    """Durable background jobs on SQLite, PostgreSQL and MySQL.

    Every command takes --database-url (or $SDJ_DATABASE_URL; default sqlite:///jobs.db).
    Failures print one line; --debug (before the command) shows the traceback.
    """
    if debug:
        os.environ["SDJ_DEBUG"] = "1"  # worker processes started by this one inherit it


def migrate(database_url: DatabaseUrl = DEFAULT_URL) -> None:
    """Create or upgrade the database schema (idempotent, safe to run concurrently)."""
    with open_storage(database_url, create=True) as storage:
        version = storage.schema_version()
        typer.echo(f"{storage.url} is at schema version {version}")


def enqueue(
    job_type: Annotated[str, typer.Argument(metavar="TYPE", help="The job type (handler name).")],
    args: Annotated[str, typer.Option("--args", help="The job's arguments as JSON.")] = "null",
    queue: Annotated[str | None, typer.Option(help="Queue name [default: default].")] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first [default: 0].")] = None,
    retries: Annotated[
        int | None, typer.Option(help="Retries after the first run [default: 3].")
    ] = None,
    delay: Annotated[float | None, typer.Option(help="Seconds to wait before running.")] = None,
    database_url: DatabaseUrl = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """Enqueue a job. Creates the schema if needed.

    The command knows no handlers, so a handler's registration defaults do not apply:
    give --queue, --priority and --retries here when they differ from the defaults.
    """
    payload = _parse_json("--args", args)
    given = {"queue": queue, "priority": priority, "retries": retries, "delay": delay}
    options = {name: value for name, value in given.items() if value is not None}
    with open_storage(database_url, create=True) as storage:
        try:
            job_id = Queue(storage).enqueue(job_type, payload, **options)
        except (TypeError, ValueError) as exc:
            raise CLIError(str(exc)) from None
        job = get_job(storage, job_id)
    if as_json:
        render.print_json(render.job_dict(job))
    else:
        when = "" if delay is None else f", runs at {render.timestamp(job.run_at)} UTC"
        typer.echo(f"enqueued job {job.id} ({job.type}) on queue {job.queue!r}{when}")


def _parse_json(option: str, text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise CLIError(f"{option} is not valid JSON: {exc}") from None
    except ValueError as exc:
        raise CLIError(f"{option} is not valid JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON (and the job's args column) has not.
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{text} is too large for a JSON number")
    return value


def stats(database_url: DatabaseUrl = DEFAULT_URL, as_json: JsonFlag = False) -> None:
    """Job counts by queue and status, and how long the oldest due job has waited."""
    with open_storage(database_url) as storage:
        per_queue = Admin(storage).queue_stats()
        workers = len(storage.live_workers(LIVE_WORKER_WINDOW))
    if as_json:
        render.print_json(render.stats_dict(per_queue, workers))
    else:
        render.console().print(render.stats_table(per_queue, workers))


def schedules(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="[MODULE:QUEUE]",
            help="Also list the schedules this Queue declares.",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrl = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """Schedules: those a Queue declares (name, spec, next run) and the stored state.

    The stored state: each schedule's last and next fire times, as recorded.
    """
    declared = _declared_schedules(load_queue(target)) if target else []
    with open_storage(database_url) as storage:
        states = Admin(storage).schedules()
    stored = None if states is None else [render.schedule_dict(state) for state in states]
    if as_json:
        render.print_json({"declared": declared, "stored": stored})
        return
    if not declared and not stored:
        typer.echo("no schedules")
        return
    out = render.console()
    if declared:
        out.print(render.records_table("declared schedules", declared))
    if stored:
        out.print(render.records_table("stored schedule state", stored))


def _declared_schedules(queue: Queue) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "name": name,
            "spec": schedule.spec,
            "next_run": schedule.next_after(now).isoformat(),
            "queue": options.get("queue", "default"),
        }
        for name, (schedule, _args, options) in sorted(queue.schedules.items())
    ]


# Registered here, in the order --help lists them.
app.command()(migrate)
app.command()(worker)
app.command()(enqueue)
app.add_typer(jobs_app, name="jobs")
app.command()(cancel)
app.command()(pause)
app.command()(resume)
app.command()(explain)
app.command()(workers)
app.command()(stats)
app.command()(prune)
app.command()(schedules)
app.command()(dashboard)
app.command()(demo)
