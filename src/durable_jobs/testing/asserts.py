"""Looks at a queue's jobs from tests: ``jobs_of``, ``assert_enqueued``, ``outcomes``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import codec
from ..job import Job, JobStatus
from ..queue import Queue

__all__ = ["ANY", "JobOutcome", "assert_enqueued", "jobs_of", "outcomes"]

_LIMIT = 100_000  # jobs of a type a test may look at


class _Any:
    def __repr__(self) -> str:
        return "ANY"


#: Matches any arguments (``assert_enqueued``'s default).
ANY: Any = _Any()


def jobs_of(
    queue: Queue, job_type: str | Callable[..., Any], *, status: JobStatus | str | None = None
) -> list[Job]:
    """The jobs of ``job_type`` (a name or a registered function), oldest first;
    ``status`` keeps those with that status."""
    name = queue.resolve_name(job_type)
    wanted = None if status is None else JobStatus(status)
    page = queue.storage.admin().jobs_page(job_type=name, status=wanted, limit=_LIMIT)
    return page.jobs[::-1]


def assert_enqueued(
    queue: Queue,
    job_type: str | Callable[..., Any],
    args: Any = ANY,
    *,
    count: int | None = None,
    status: JobStatus | str | None = None,
) -> list[Job]:
    """Assert that jobs of ``job_type`` exist with ``args`` (compared as JSON, so a
    dataclass matches its stored form; default: any), exactly ``count`` of them
    (default: at least one), in ``status`` if given. Returns the matching jobs."""
    found = jobs_of(queue, job_type, status=status)
    matching = found if args is ANY else [j for j in found if _same_args(j, args)]
    if len(matching) == count if count is not None else matching:
        return matching
    expected = "some" if count is None else str(count)
    stored = ", ".join(j.args.decode() for j in found[:10]) or "none"
    raise AssertionError(
        f"expected {expected} job(s) of {queue.resolve_name(job_type)!r}"
        f"{'' if args is ANY else f' with args {_as_json(args)}'}"
        f"{'' if status is None else f' in status {JobStatus(status).value!r}'};"
        f" found {len(matching)} (args of the jobs of that type: {stored})"
    )


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended, or that it has not: its status, its decoded result (completed
    jobs) and its last error."""

    job_id: str
    status: JobStatus
    value: Any
    error: str | None


def outcomes(queue: Queue, job_type: str | Callable[..., Any]) -> list[JobOutcome]:
    """The outcome of each job of ``job_type``, oldest first; results are decoded as
    ``queue.result`` does."""
    name = queue.resolve_name(job_type)
    handler = queue.handler(name)
    decode = codec.loads if handler is None else handler.decode_result
    return [
        JobOutcome(
            job.id,
            job.status,
            None if job.result is None else decode(job.result),
            job.last_error,
        )
        for job in jobs_of(queue, name)
    ]


def _as_json(args: Any) -> Any:
    return json.loads(codec.dumps(args))


def _same_args(job: Job, args: Any) -> bool:
    return bool(json.loads(job.args) == _as_json(args))
