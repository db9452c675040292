"""``sdj jobs list`` searches, ``sdj jobs retry --failed``, ``sdj jobs show``'s attempt
history and ``sdj prune``, on every backend."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs.job import utcnow
from tests.storage.helpers import claim_one, sql


def ok(result: Any) -> str:
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def refused(result: Any) -> str:
    assert result.exit_code != 0, result.output
    text = str(result.output)
    assert "Traceback" not in text
    return text


def _fail(storage: jobs.SQLStorage, job_id: str, worker: str = "w1") -> None:
    job = claim_one(storage, worker)
    assert job.id == job_id
    assert storage.fail(job_id, "boom", None, worker_id=worker, fence=job.fence, traceback="tb")


def test_jobs_list_by_tag_and_meta_with_pages(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    ids = queue.enqueue_many(
        [("mail", i, {"tags": ["welcome"], "meta": {"tenant": "acme"}}) for i in range(3)]
    )
    other = queue.enqueue("mail", 9, meta={"tenant": "zeta"})
    url = ("--database-url", db_url)
    found = json.loads(ok(sdj("jobs", "list", "--tag", "welcome", *url, "--json")))
    assert [job["id"] for job in found] == ids[::-1]
    found = json.loads(ok(sdj("jobs", "list", "--meta", "tenant=zeta", *url, "--json")))
    assert [job["id"] for job in found] == [other]
    out = ok(sdj("jobs", "list", "--tag", "welcome", "--limit", "2", *url))
    token = out.rsplit("--after ", 1)[1].strip()
    rest = sdj("jobs", "list", "--tag", "welcome", "--after", token, *url, "--json")
    assert [job["id"] for job in json.loads(ok(rest))] == [ids[0]]
    since = json.loads(ok(sdj("jobs", "list", "--created-after", "1h", *url, "--json")))
    assert len(since) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["jobs", "list", "--meta", "tenant"], "is not of the form key=value"),
        (["jobs", "list", "--status", "done"], "is not one of"),
        (["jobs", "list", "--after", "soon"], "is not a cursor"),
        (["jobs", "list", "--created-after", "yesterday"], "is neither a duration"),
        (["prune", "--older-than", "-7d"], "is not a duration"),
        (["prune", "--older-than", "7d", "--status", "pending"], "cannot prune jobs in status"),
        (["jobs", "retry"], "give a job id or --failed"),
        (["jobs", "retry", "x", "--failed"], "give a job id or --failed"),
        (["jobs", "retry", "x", "--type", "t"], "add --failed"),
    ],
)
def test_bad_input_is_one_clear_error(sdj: Any, db_url: str, args: list[str], message: str) -> None:
    assert message in refused(sdj(*args, "--database-url", db_url))


def test_jobs_retry_failed_and_the_attempt_history(
    sdj: Any, db_url: str, queue: jobs.Queue
) -> None:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    first = queue.enqueue("flaky", retries=0)
    _fail(storage, first)
    second = queue.enqueue("other", retries=0)
    _fail(storage, second)
    shown = json.loads(ok(sdj("jobs", "show", first, "--database-url", db_url, "--json")))
    [attempt] = shown["attempts"]
    assert (attempt["attempt"], attempt["worker"], attempt["error"]) == (1, "w1", "boom")
    assert "failed attempts" in ok(sdj("jobs", "show", first, "--database-url", db_url))
    out = ok(
        sdj(
            "jobs",
            "retry",
            "--failed",
            "--type",
            "flaky",
            "--since",
            "1h",
            "--database-url",
            db_url,
        )
    )
    assert "1 failed job(s) are pending again" in out
    statuses = [queue.get_job(i).status for i in (first, second)]  # type: ignore[union-attr]
    assert statuses == [jobs.JobStatus.PENDING, jobs.JobStatus.FAILED]
    done = json.loads(ok(sdj("jobs", "retry", "--failed", "--database-url", db_url, "--json")))
    assert done == {"retried": 1}


def test_prune(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    old, young = queue.enqueue("done"), queue.enqueue("done")
    for job_id, days in ((old, 8), (young, 1)):
        at = storage.dialect.time_param(utcnow() - timedelta(days=days))
        sql(
            storage,
            "UPDATE sdj_jobs SET status = 'completed', finished_at = :t,"
            " created_at = :t WHERE id = :id",
            t=at,
            id=job_id,
        )
    out = ok(sdj("prune", "--older-than", "7d", "--status", "completed", "--database-url", db_url))
    assert "deleted 1 job(s)" in out
    assert queue.get_job(old) is None and queue.get_job(young) is not None
