"""Retry, delete and enqueue: allowed only through ``auth``, POST-only and CSRF-safe."""

from __future__ import annotations

import json

import pytest
from starlette.requests import Request

import durable_jobs as jobs
from durable_jobs.dashboard import create_app

from .helpers import Made, TestClient, csrf_of, post_action, register


def test_read_only_without_auth(queue: jobs.Queue, readonly: TestClient, made: Made) -> None:
    page = readonly.get(f"/jobs/{made.failed}").text
    assert "read-only" in page
    assert "/actions/" not in page and 'name="csrf"' not in page
    assert "sdj_csrf" not in readonly.cookies
    for action in ("retry", "delete"):
        response = readonly.post(f"/actions/{action}", data={"id": made.failed, "csrf": "x" * 43})
        assert response.status_code == 403
    assert readonly.post("/actions/enqueue", data={"type": "greet"}).status_code == 403
    assert "read-only for you" in readonly.get("/enqueue").text
    job = queue.get_job(made.failed)
    assert job is not None and job.status == "failed"
    assert len(queue.storage.get_jobs_by_status("pending", 10)) == 2  # nothing enqueued


def test_auth_saying_no_is_read_only(queue: jobs.Queue, made: Made) -> None:
    client = TestClient(create_app(queue, auth=lambda request: False))
    assert "/actions/" not in client.get(f"/jobs/{made.failed}").text
    response = client.post("/actions/retry", data={"id": made.failed})
    assert response.status_code == 403


def test_auth_sees_the_request_and_may_be_async(queue: jobs.Queue, made: Made) -> None:
    async def admins_only(request: Request) -> bool:
        return request.headers.get("x-role") == "admin"

    client = TestClient(create_app(queue, auth=admins_only))
    assert "/actions/retry" not in client.get(f"/jobs/{made.failed}").text
    client.headers["x-role"] = "admin"
    response = post_action(client, f"/jobs/{made.failed}", "/actions/retry", id=made.failed)
    assert response.status_code == 303  # type: ignore[attr-defined]


def test_retry_a_failed_job(queue: jobs.Queue, client: TestClient, made: Made) -> None:
    response = post_action(client, f"/jobs/{made.workflow}", "/actions/retry", id=made.workflow)
    assert response.status_code == 303  # type: ignore[attr-defined]
    assert response.headers["location"] == f"/jobs/{made.workflow}?done=retried"  # type: ignore[attr-defined]
    job = queue.get_job(made.workflow)
    assert job is not None and job.status == "pending" and job.attempt == 0
    # The workflow resumes after its last saved step: checkpoints are kept.
    assert [cp.call_type for cp in queue.storage.get_checkpoints(made.workflow)] == [
        "charge",
        "ship",
    ]
    page = client.get(f"/jobs/{made.workflow}?done=retried").text
    assert "Job retried" in page and 'id="job-status">pending<' in page


def test_only_failed_or_retrying_jobs_are_retried(
    queue: jobs.Queue, client: TestClient, made: Made
) -> None:
    page = client.get(f"/jobs/{made.completed}").text
    assert 'id="retry"' not in page and 'id="delete"' in page
    response = post_action(client, "/enqueue", "/actions/retry", id=made.completed)
    assert response.status_code == 409  # type: ignore[attr-defined]
    assert "only failed, cancelled or retrying jobs" in response.text  # type: ignore[attr-defined]
    missing = post_action(client, "/enqueue", "/actions/retry", id="nope")
    assert missing.status_code == 404  # type: ignore[attr-defined]
    nul = post_action(client, "/enqueue", "/actions/delete", id="a\x00b")
    assert nul.status_code == 400  # type: ignore[attr-defined]
    job = queue.get_job(made.completed)
    assert job is not None and job.status == "completed"


def test_delete_a_job_and_its_checkpoints(
    queue: jobs.Queue, client: TestClient, made: Made
) -> None:
    response = post_action(client, f"/jobs/{made.workflow}", "/actions/delete", id=made.workflow)
    assert response.status_code == 303  # type: ignore[attr-defined]
    assert response.headers["location"] == "/jobs?done=deleted"  # type: ignore[attr-defined]
    assert queue.get_job(made.workflow) is None
    assert queue.storage.get_checkpoints(made.workflow) == []
    assert "Job deleted." in client.get("/jobs?done=deleted").text


def test_a_running_job_is_not_deleted(
    queue: jobs.Queue, storage: jobs.SQLStorage, client: TestClient
) -> None:
    queue.enqueue("greet", {"name": "busy"})
    [running] = storage.claim("default", "some-worker", 1)
    page = client.get(f"/jobs/{running.id}").text
    assert 'id="delete"' not in page and "some-worker" in page
    response = post_action(client, "/enqueue", "/actions/delete", id=running.id)
    assert response.status_code == 409  # type: ignore[attr-defined]
    assert queue.get_job(running.id) is not None


def test_enqueue_with_json_arguments(queue: jobs.Queue, client: TestClient) -> None:
    register(queue)
    assert '<option value="greet">' in client.get("/enqueue").text
    args = {"name": "Grace", "tags": ["a", "<b>"]}
    response = post_action(
        client,
        "/enqueue",
        "/actions/enqueue",
        type="greet",
        args=json.dumps(args),
        queue="idle",
        priority="7",
        delay="60",
    )
    assert response.status_code == 303  # type: ignore[attr-defined]
    job_id = response.headers["location"].split("/jobs/")[1].split("?")[0]  # type: ignore[attr-defined]
    job = queue.get_job(job_id)
    assert job is not None and job.type == "greet" and json.loads(job.args) == args
    assert (job.queue, job.priority, job.status) == ("idle", 7, "pending")
    assert job.run_at is not None and job.run_at > job.created_at


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "greet", "args": "{not json"}, "arguments are not valid JSON"),
        ({"type": "", "args": "null"}, "give the job type"),
        ({"type": "greet", "priority": "high"}, "priority must be a number"),
        ({"type": "greet", "delay": "-5"}, "delay must not be negative"),
    ],
)
def test_enqueue_refuses_bad_input(
    queue: jobs.Queue, client: TestClient, fields: dict[str, str], message: str
) -> None:
    response = post_action(client, "/enqueue", "/actions/enqueue", **fields)
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert message in response.text  # type: ignore[attr-defined]
    # The form comes back with what was typed, so it can be corrected.
    assert f'value="{fields["type"]}"' in response.text  # type: ignore[attr-defined]
    assert queue.storage.get_jobs_by_status("pending", 10) == []


def test_csrf_token_must_match_the_cookie(queue: jobs.Queue, client: TestClient) -> None:
    token = csrf_of(client.get("/enqueue").text)
    assert token == client.cookies["sdj_csrf"]
    action = {"type": "greet", "args": "null"}
    for data in (action, {**action, "csrf": "forged" * 8}):
        response = client.post("/actions/enqueue", data=data)
        assert response.status_code == 403 and "CSRF" in response.text
    # A token without its cookie, as a forged cross-site form would carry, is refused too.
    client.cookies.clear()
    response = client.post("/actions/enqueue", data={**action, "csrf": token})
    assert response.status_code == 403
    assert queue.storage.get_jobs_by_status("pending", 10) == []


def test_cross_origin_posts_are_refused(queue: jobs.Queue, client: TestClient) -> None:
    token = csrf_of(client.get("/enqueue").text)
    data = {"type": "greet", "csrf": token}
    for origin in ("https://evil.example", "null", "http://testserver.evil.example"):
        response = client.post("/actions/enqueue", data=data, headers={"origin": origin})
        assert response.status_code == 403 and "cross-origin" in response.text
    referer = {"referer": "https://evil.example/page"}
    assert client.post("/actions/enqueue", data=data, headers=referer).status_code == 403
    assert queue.storage.get_jobs_by_status("pending", 10) == []
    same = {"origin": "http://testserver"}
    response = client.post("/actions/enqueue", data=data, headers=same, follow_redirects=False)
    assert response.status_code == 303


def test_actions_take_only_urlencoded_posts(client: TestClient) -> None:
    token = csrf_of(client.get("/enqueue").text)
    response = client.post("/actions/enqueue", json={"type": "greet", "csrf": token})
    assert response.status_code == 415
    assert client.get("/actions/retry").status_code == 405


def test_the_csrf_cookie_is_strict_and_http_only(client: TestClient) -> None:
    header = client.get("/").headers["set-cookie"]
    assert header.startswith("sdj_csrf=")
    assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/" in header
    # Set once per browser: later pages reuse it.
    assert "set-cookie" not in client.get("/jobs").headers
