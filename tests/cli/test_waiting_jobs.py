"""``sdj jobs`` and ``sdj stats`` with a job that waits (a durable sleep), on every backend."""

from __future__ import annotations

import json
from typing import Any

import durable_jobs as jobs
from tests.cli.outputs import ok
from tests.helpers import wait_for


def _sleeping_job(queue: jobs.Queue) -> jobs.Job:
    """A job that reported its progress and then sleeps for an hour, stored by a worker."""

    @queue.job()
    def nightly(total: int) -> None:
        jobs.set_progress({"done": 3, "total": total})
        jobs.sleep(3600)

    job_id = queue.enqueue(nightly, 10)
    queue.enqueue("other")  # pending, to be left out of the listing
    with queue.worker({"default": 1}, poll_interval=0.05):
        waiting = wait_for(
            lambda: (j := queue.get_job(job_id)) and j.status is jobs.JobStatus.WAITING and j
        )
    assert isinstance(waiting, jobs.Job)
    return waiting


def test_jobs_list_and_show_a_waiting_job(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    job = _sleeping_job(queue)
    assert job.wait_until is not None
    listed = json.loads(
        ok(sdj("jobs", "list", "--status", "waiting", "--database-url", db_url, "--json"))
    )
    assert [(j["id"], j["status"]) for j in listed] == [(job.id, "waiting")]
    table = ok(sdj("jobs", "list", "--status", "waiting", "--database-url", db_url))
    assert job.id in table and "waiting" in table

    shown = json.loads(ok(sdj("jobs", "show", job.id, "--database-url", db_url, "--json")))
    assert (shown["status"], shown["waiting_for"]) == ("waiting", "sleep")
    assert shown["wait_until"] == job.wait_until.isoformat()
    assert shown["progress"] == {"done": 3, "total": 10}
    assert [(c["call_index"], c["call_type"]) for c in shown["checkpoints"]] == [(0, "jobs.sleep")]
    text = ok(sdj("jobs", "show", job.id, "--database-url", db_url))
    assert "waiting_for" in text and "sleep" in text
    assert f"{job.wait_until:%Y-%m-%d %H:%M:%S} UTC (in 59m" in text
    assert '{"done": 3, "total": 10}' in text


def test_stats_count_waiting_jobs(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    _sleeping_job(queue)
    stats = json.loads(ok(sdj("stats", "--database-url", db_url, "--json")))
    assert stats["queues"]["default"]["waiting"] == 1
    assert "waiting" in ok(sdj("stats", "--database-url", db_url))


def test_jobs_show_a_fan_out_parent_with_its_children_counted_live(
    sdj: Any, db_url: str, queue: jobs.Queue
) -> None:
    @queue.job(queue="kids")
    def child(n: int) -> int:
        if n == 0:
            raise jobs.NoRetry("no zero")
        return n

    @queue.job()
    def parent() -> None:
        jobs.fan_out([jobs.sub(child, n) for n in range(25)], on_failure="collect")

    parent_id = queue.enqueue(parent)
    with queue.worker({"default": 1}, poll_interval=0.05):
        wait_for(lambda: queue.get_job(parent_id).status is jobs.JobStatus.WAITING)
    shown = json.loads(ok(sdj("jobs", "show", parent_id, "--database-url", db_url, "--json")))
    assert shown["children"]["total"] == 25 and shown["children"]["by_status"] == {"pending": 25}
    with queue.worker({"kids": 2}, poll_interval=0.05):  # no worker resumes the parent
        wait_for(lambda: queue.storage.admin().children(parent_id).finished == 25)
    shown = json.loads(ok(sdj("jobs", "show", parent_id, "--database-url", db_url, "--json")))
    assert shown["status"] == "pending"  # decided: due to resume
    children = shown["children"]
    assert (children["total"], children["finished"]) == (25, 25)
    assert children["by_status"] == {"completed": 24, "failed": 1}
    assert len(children["first"]) == 20 and children["first"][0]["status"] == "failed"
    text = ok(sdj("jobs", "show", parent_id, "--database-url", db_url))
    assert "children: 25 of 25 finished (24 completed, 1 failed)" in text
    assert "the first 20 of 25" in text and "no zero" in text
    leaf = json.loads(
        ok(sdj("jobs", "show", children["first"][1]["id"], "--database-url", db_url, "--json"))
    )
    assert leaf["parent_id"] == parent_id and leaf["children"]["total"] == 0
