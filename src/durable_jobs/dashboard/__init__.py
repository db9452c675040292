"""A web dashboard for operators: ``create_app(queue_or_storage, auth=None)``.

Needs the ``dashboard`` extra: ``pip install 'simple-durable-jobs[dashboard]'``.
"""

try:
    from .app import create_app
except ModuleNotFoundError as exc:  # pragma: no cover - depends on what is installed
    if exc.name in ("starlette", "jinja2"):
        raise ModuleNotFoundError(
            "durable_jobs.dashboard needs its extra: pip install 'simple-durable-jobs[dashboard]'",
            name=exc.name,
        ) from exc
    raise

__all__ = ["create_app"]
