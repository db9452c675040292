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


def test_a_fan_out_parent_lists_its_children_counted_live(
    queue: jobs.Queue, client: TestClient
) -> None:
    @queue.job(queue="kids")
    def child(n: int) -> int:
        if n == 1:
            raise jobs.NoRetry(f"child {n} <refused>")
        return n

    @queue.job()
    def parent() -> None:
        jobs.fan_out([jobs.sub(child, n) for n in range(3)], on_failure="collect")

    parent_id = queue.enqueue(parent)
    with queue.worker({"default": 1}, **FAST):
        wait_for(lambda: queue.get_job(parent_id).status is jobs.JobStatus.WAITING)
    [first, *_] = queue.storage.admin().children(parent_id).first
    with queue.worker({"kids": 1}, **FAST):  # the children run; no worker resumes the parent
        wait_for(lambda: queue.storage.admin().children(parent_id).finished == 3)
    html = client.get(f"/jobs/{parent_id}").text
    count = html[html.index('id="job-children-count"') :]
    shown = " ".join(count[len('id="job-children-count">') : count.index("</p>")].split())
    assert shown == "3 of 3 finished (2 completed, 1 failed)"
    section = html[html.index('id="job-children"') :]
    assert section.count('class="status status-completed"') == 2
    assert "child 1 &lt;refused&gt;" in section and "<refused>" not in html
    child_page = client.get(f"/jobs/{first.id}").text
    assert f'href="/jobs/{parent_id}" id="job-parent"' in child_page
