"""``sdj dashboard``: serve the web dashboard on its own, read-only."""

from __future__ import annotations

from typing import Annotated

import typer

from .database import DEFAULT_URL, DatabaseUrl, open_storage
from .errors import CLIError

__all__ = ["dashboard"]


def dashboard(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")
    ] = "127.0.0.1",
    database_url: DatabaseUrl = DEFAULT_URL,
) -> None:
    """Serve the web dashboard (read-only) until Ctrl-C.

    For retry, delete and enqueue, mount durable_jobs.dashboard.create_app in your own
    application with an auth callable. Needs the dashboard extra.
    """
    try:
        import uvicorn

        from ..dashboard import create_app
    except ModuleNotFoundError:
        raise CLIError(
            "the dashboard needs its extra: pip install 'simple-durable-jobs[dashboard]'"
        ) from None
    with open_storage(database_url) as storage:
        typer.echo(
            f"dashboard for {storage.url} on http://{host}:{port}/ (read-only; Ctrl-C stops)"
        )
        uvicorn.run(create_app(storage), host=host, port=port, log_level="warning")
