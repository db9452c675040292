"""``create_app``: the dashboard as a Starlette ASGI application."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..queue import Queue
from ..storage import JobStore, SQLStorage
from .security import Auth, SecurityHeaders
from .views import Dashboard

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"


def create_app(
    queue_or_storage: Queue | JobStore | str,
    auth: Auth | None = None,
    *,
    refresh: float = 5.0,
) -> Starlette:
    """The dashboard for a ``Queue``, an ``SQLStorage`` or a database URL.

    Mount it at any path of a Starlette or FastAPI app (``Mount("/jobs", app=...)``,
    ``app.mount("/jobs", ...)``) or serve it alone (``sdj dashboard``). Links follow the
    mount path.

    ``auth(request) -> bool`` (or an async one) decides who may retry, delete and
    enqueue; without it the dashboard is read-only. Viewing is open to whoever reaches
    the app: put it behind your application's login to restrict that. Given a
    ``Queue``, the dashboard also knows its job types and declared schedules.
    ``refresh`` is how often, in seconds, open pages update themselves.
    """
    queue: Queue | None = None
    storage: JobStore
    if isinstance(queue_or_storage, Queue):
        queue = queue_or_storage
        storage = queue.storage
    elif isinstance(queue_or_storage, str):
        storage = SQLStorage(queue_or_storage)
    elif isinstance(queue_or_storage, JobStore):
        storage = queue_or_storage
    else:
        raise TypeError(
            "the dashboard needs a Queue, a database URL or a storage implementing"
            f" durable_jobs.storage.JobStore (such as SQLStorage), got"
            f" {type(queue_or_storage).__name__}"
        )
    if refresh <= 0:
        raise ValueError(f"refresh must be a positive number of seconds, got {refresh!r}")
    board = Dashboard(storage, queue, auth, refresh)
    routes = [
        Route("/", board.overview, name="overview"),
        Route("/jobs", board.jobs, name="jobs"),
        Route("/jobs/{job_id:path}", board.job, name="job"),
        Route("/schedules", board.schedules, name="schedules"),
        Route("/workers", board.workers, name="workers"),
        Route("/enqueue", board.enqueue_form, name="enqueue"),
        Route("/actions/retry", board.retry, methods=["POST"], name="retry"),
        Route("/actions/retry-failed", board.retry_failed, methods=["POST"], name="retry-failed"),
        Route("/actions/delete", board.delete, methods=["POST"], name="delete"),
        Route("/actions/cancel", board.cancel, methods=["POST"], name="cancel"),
        Route("/actions/pause", board.pause, methods=["POST"], name="pause"),
        Route("/actions/resume", board.resume, methods=["POST"], name="resume"),
        Route("/actions/pause-queue", board.pause_queue, methods=["POST"], name="pause-queue"),
        Route("/actions/resume-queue", board.resume_queue, methods=["POST"], name="resume-queue"),
        Route("/actions/enqueue", board.enqueue, methods=["POST"], name="enqueue-job"),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])
    app.state.dashboard = board
    return app
