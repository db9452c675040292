"""The dashboard with a job that waits (a durable sleep), on every backend."""

from __future__ import annotations

import durable_jobs as jobs
from tests.helpers import wait_for

from .helpers import FAST, TestClient


def test_a_waiting_job_shows_its_deadline_and_progress(
    queue: jobs.Queue, client: TestClient
) -> None:
    @queue.job()
    def nightly() -> None:
        jobs.set_progress({"done": 3, "note": "<b>bold</b>"})
        jobs.sleep(3600)

    job_id = queue.enqueue(nightly)
    with queue.worker(**FAST):
        job = wait_for(
            lambda: (j := queue.get_job(job_id)) and j.status is jobs.JobStatus.WAITING and j
        )
    assert isinstance(job, jobs.Job) and job.wait_until is not None
    html = client.get(f"/jobs/{job_id}").text
    assert 'class="status status-waiting"' in html
    waiting = html[html.index('id="job-waiting"') :]
    waiting = waiting[: waiting.index("</dd>")]
    assert f"sleep until {job.wait_until:%Y-%m-%d %H:%M:%S} (in 59 min" in waiting
    progress = html[html.index('id="job-progress"') :]
    assert "&#34;done&#34;: 3" in progress and "&lt;b&gt;bold&lt;/b&gt;" in progress
    assert "<b>bold</b>" not in html
    assert "Wait (sleep) ends" in html  # on the timeline
    listing = client.get("/jobs?status=waiting").text
    assert job_id in listing
    overview = client.get("/").text
    assert "/jobs?status=waiting" in overview
