"""The dashboard's operations: searching jobs by tag and meta, the attempt history on a
job's page, and the bulk retry of failed jobs (behind auth and CSRF)."""

from __future__ import annotations

import durable_jobs as jobs
from durable_jobs.dashboard import create_app

from .helpers import Made, TestClient, post_action


def test_search_by_tag_and_meta(queue: jobs.Queue, client: TestClient, made: Made) -> None:
    tagged = queue.enqueue("greet", {"name": "t"}, tags=["vip"], meta={"tenant": "acme"})
    other = queue.enqueue("greet", {"name": "o"}, tags=["vip"], meta={"tenant": "zeta"})
    page = client.get("/jobs?tag=vip").text
    assert tagged in page and other in page and made.completed not in page
    page = client.get("/jobs?tag=vip&meta=tenant%3Dacme").text
    assert tagged in page and other not in page
    assert 'name="tag" value="vip"' in page
    assert client.get("/jobs?meta=tenant").status_code == 400  # not key=value


def test_a_failed_job_shows_its_attempts(client: TestClient, made: Made) -> None:
    page = client.get(f"/jobs/{made.failed}").text
    assert 'id="job-attempts"' in page and "Failed attempts" in page
    assert "kaboom &lt;img" in page  # escaped
    assert 'id="job-attempts"' not in client.get(f"/jobs/{made.completed}").text


def test_bulk_retry_of_failed_jobs(queue: jobs.Queue, client: TestClient, made: Made) -> None:
    page = client.get("/jobs?status=failed&type=explode").text
    assert 'id="retry-failed"' in page
    assert 'id="retry-failed"' not in client.get("/jobs?status=pending").text
    response = post_action(
        client, "/jobs?status=failed", "/actions/retry-failed", type="explode", queue=""
    )
    assert response.status_code == 303  # type: ignore[attr-defined]
    location = response.headers["location"]  # type: ignore[attr-defined]
    assert location == "/jobs?status=failed&type=explode&done=retried-failed"
    failed, workflow = queue.get_job(made.failed), queue.get_job(made.workflow)
    assert failed is not None and failed.status is jobs.JobStatus.PENDING
    assert workflow is not None and workflow.status is jobs.JobStatus.FAILED  # another type
    assert "Failed jobs retried" in client.get(location).text


def test_bulk_retry_needs_auth_and_csrf(
    queue: jobs.Queue, readonly: TestClient, client: TestClient, made: Made
) -> None:
    assert 'id="retry-failed"' not in readonly.get("/jobs?status=failed").text
    assert readonly.post("/actions/retry-failed", data={"csrf": "x" * 43}).status_code == 403
    denied = TestClient(create_app(queue, auth=lambda request: False))
    assert denied.post("/actions/retry-failed", data={}).status_code == 403
    client.get("/jobs")  # a CSRF cookie, but no token sent
    forged = client.post("/actions/retry-failed", data={"type": ""}, follow_redirects=False)
    assert forged.status_code == 403
    job = queue.get_job(made.failed)
    assert job is not None and job.status is jobs.JobStatus.FAILED
