"""``sdj cancel``, ``sdj pause`` and ``sdj resume``, on every backend."""

from __future__ import annotations

import json
from typing import Any

import durable_jobs as jobs
from tests.cli.outputs import error, ok


def test_cancel_a_job_and_its_children(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    parent = queue.enqueue("parent")
    kids = [queue.storage.enqueue(jobs.Job(type="kid", parent_id=parent)) for _ in range(2)]
    text = ok(sdj("cancel", parent, "--database-url", db_url))
    assert text.strip() == f"cancelled job {parent} and 2 descendant(s)"
    for job_id in (parent, *kids):
        job = queue.get_job(job_id)
        assert job is not None and job.status is jobs.JobStatus.CANCELLED
    line = error(sdj("cancel", parent, "--database-url", db_url))
    assert line == f"Error: job {parent} is cancelled: only unfinished jobs can be cancelled"
    assert error(sdj("cancel", "nope", "--database-url", db_url)) == "Error: no job with id 'nope'"
    other = queue.enqueue("parent")
    data = json.loads(ok(sdj("cancel", other, "--database-url", db_url, "--json")))
    assert data == {"id": other, "cancelled": [other]}


def test_pause_and_resume_a_job(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("work", tags=["nightly"], meta={"tenant": "acme"})
    assert ok(sdj("pause", job_id, "--database-url", db_url)).strip() == f"job {job_id} is paused"
    line = error(sdj("pause", job_id, "--database-url", db_url))
    assert line == f"Error: job {job_id} is paused already: nothing to pause"
    shown = json.loads(ok(sdj("jobs", "show", job_id, "--database-url", db_url, "--json")))
    assert (shown["status"], shown["paused_from"]) == ("paused", "pending")
    assert (shown["tags"], shown["meta"]) == (["nightly"], {"tenant": "acme"})
    listed = json.loads(
        ok(sdj("jobs", "list", "--status", "paused", "--database-url", db_url, "--json"))
    )
    assert [j["id"] for j in listed] == [job_id]
    resumed = json.loads(ok(sdj("resume", job_id, "--database-url", db_url, "--json")))
    assert (resumed["status"], resumed["paused_from"]) == ("pending", None)
    line = error(sdj("resume", job_id, "--database-url", db_url))
    assert line == f"Error: job {job_id} is not paused: nothing to resume"


def test_pause_and_resume_a_queue(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    text = ok(sdj("pause", "--queue", "emails", "--database-url", db_url))
    assert text.strip() == "queue 'emails' paused"
    assert list(queue.paused_queues()) == ["emails"]
    data = json.loads(ok(sdj("resume", "--queue", "emails", "--database-url", db_url, "--json")))
    assert data == {"queue": "emails", "paused": False}
    assert queue.paused_queues() == {}
    line = error(sdj("pause", "--database-url", db_url))
    assert line == "Error: give a job id or --queue NAME to pause"
    line = error(sdj("resume", "x", "--queue", "q", "--database-url", db_url))
    assert line == "Error: give a job id or --queue NAME to resume, not both"
