"""Cancel, pause and resume of jobs and queues from the dashboard, behind its auth and
CSRF protection, on every backend."""

from __future__ import annotations

import durable_jobs as jobs

from .helpers import TestClient, post_action


def test_cancel_a_job_from_its_page(queue: jobs.Queue, client: TestClient) -> None:
    job_id = queue.enqueue("greet", {"name": "x"})
    kid = queue.storage.enqueue(jobs.Job(type="greet", parent_id=job_id))
    page = client.get(f"/jobs/{job_id}").text
    assert 'id="cancel"' in page and 'id="pause"' in page and 'id="resume"' not in page
    response = post_action(client, f"/jobs/{job_id}", "/actions/cancel", id=job_id)
    assert response.status_code == 303  # type: ignore[attr-defined]
    assert response.headers["location"] == f"/jobs/{job_id}?done=cancelled"  # type: ignore[attr-defined]
    for each in (job_id, kid):
        job = queue.get_job(each)
        assert job is not None and job.status is jobs.JobStatus.CANCELLED
    page = client.get(f"/jobs/{job_id}?done=cancelled").text
    assert "Job cancelled" in page and 'id="cancel"' not in page and 'id="pause"' not in page
    again = post_action(client, "/enqueue", "/actions/cancel", id=job_id)
    assert again.status_code == 409  # type: ignore[attr-defined]
    assert "only unfinished jobs can be cancelled" in again.text  # type: ignore[attr-defined]
    missing = post_action(client, "/enqueue", "/actions/cancel", id="nope")
    assert missing.status_code == 404  # type: ignore[attr-defined]


def test_pause_and_resume_a_job(queue: jobs.Queue, client: TestClient) -> None:
    job_id = queue.enqueue("greet", {"name": "x"}, tags=["a&b"], meta={"k": "<v>"})
    response = post_action(client, f"/jobs/{job_id}", "/actions/pause", id=job_id)
    assert response.status_code == 303  # type: ignore[attr-defined]
    page = client.get(f"/jobs/{job_id}").text
    assert 'id="job-status">paused<' in page and 'id="resume"' in page and 'id="pause"' not in page
    assert "a&amp;b" in page and "<v>" not in page
    response = post_action(client, f"/jobs/{job_id}", "/actions/resume", id=job_id)
    assert response.status_code == 303  # type: ignore[attr-defined]
    job = queue.get_job(job_id)
    assert job is not None and job.status is jobs.JobStatus.PENDING
    refused = post_action(client, "/enqueue", "/actions/resume", id=job_id)
    assert refused.status_code == 409  # type: ignore[attr-defined]


def test_pause_and_resume_a_queue_from_the_overview(queue: jobs.Queue, client: TestClient) -> None:
    queue.enqueue("greet", {"name": "x"}, queue="emails")
    page = client.get("/").text
    assert 'action="/actions/pause-queue"' in page
    response = post_action(client, "/", "/actions/pause-queue", queue="emails")
    assert response.status_code == 303  # type: ignore[attr-defined]
    assert list(queue.paused_queues()) == ["emails"]
    page = client.get("/?done=queue-paused").text
    assert "Queue paused" in page and 'action="/actions/resume-queue"' in page
    response = post_action(client, "/", "/actions/resume-queue", queue="emails")
    assert response.status_code == 303  # type: ignore[attr-defined]
    assert queue.paused_queues() == {}
    bad = post_action(client, "/", "/actions/pause-queue", queue="")
    assert bad.status_code == 400  # type: ignore[attr-defined]


def test_control_actions_need_auth(queue: jobs.Queue, readonly: TestClient) -> None:
    job_id = queue.enqueue("greet", {"name": "x"})
    page = readonly.get(f"/jobs/{job_id}").text
    assert "/actions/" not in page
    for action, field in (
        ("cancel", "id"),
        ("pause", "id"),
        ("resume", "id"),
        ("pause-queue", "queue"),
        ("resume-queue", "queue"),
    ):
        response = readonly.post(f"/actions/{action}", data={field: job_id, "csrf": "x" * 43})
        assert response.status_code == 403
    job = queue.get_job(job_id)
    assert job is not None and job.status is jobs.JobStatus.PENDING
    assert queue.paused_queues() == {}
