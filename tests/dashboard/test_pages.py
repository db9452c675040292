"""Every page through the Starlette test client, on jobs a real worker ran."""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import durable_jobs as jobs
from durable_jobs.dashboard import create_app
from durable_jobs.job import utcnow
from tests.helpers import wait_for

from .helpers import FAST, Made, TestClient


def card(html: str, status: str) -> int:
    """The count on the overview's card for ``status``."""
    match = re.search(
        rf'<span class="n">(\d+)</span>\s*<span class="status status-{status}">', html
    )
    assert match, f"no card for {status}"
    return int(match.group(1))


def job_ids(html: str) -> list[str]:
    """The job ids a listing shows, in order."""
    return re.findall(r'<a class="id" href="[^"]*">([^<]+)</a>', html)


def test_overview_counts_chart_and_oldest_due_job(client: TestClient, made: Made) -> None:
    response = client.get("/")
    assert response.status_code == 200
    html = response.text
    assert (card(html, "completed"), card(html, "failed"), card(html, "pending")) == (2, 2, 2)
    assert card(html, "running") == card(html, "retrying") == 0
    # The chart: one bar per minute, this hour's four finished jobs somewhere in it.
    assert html.count('<g class="minute">') == 60
    assert "2 completed, 2 failed" in html and "(50.0 % failed)" in html
    assert re.search(r"<title>\d\d:\d\d UTC: \d+ completed, \d+ failed", html)
    # Oldest due: the job on the queue no worker serves, not the one due in an hour.
    assert made.due in html and made.later not in html
    assert 'href="/jobs?queue=idle"' in html


def test_jobs_lists_newest_first_and_filters(client: TestClient, made: Made) -> None:
    listed = job_ids(client.get("/jobs").text)
    assert listed == [
        made.due,
        made.later,
        made.workflow,
        made.failed,
        made.completed_plain,
        made.completed,
    ]
    assert job_ids(client.get("/jobs?status=failed").text) == [made.workflow, made.failed]
    assert job_ids(client.get("/jobs?queue=idle").text) == [made.due]
    assert job_ids(client.get("/jobs?type=greet&status=pending").text) == [made.due, made.later]
    assert job_ids(client.get("/jobs?type=nope").text) == []
    assert "No jobs match." in client.get("/jobs?type=nope").text


def test_search_by_id_bad_filters_and_unknown_jobs(client: TestClient, made: Made) -> None:
    found = client.get(f"/jobs?id={made.failed}", follow_redirects=False)
    assert found.status_code == 303 and found.headers["location"] == f"/jobs/{made.failed}"
    missing = client.get("/jobs?id=no-such-job")
    assert missing.status_code == 200 and "No job with id <code>no-such-job</code>" in missing.text
    assert client.get("/jobs?status=sleeping").status_code == 400
    assert client.get("/jobs?before=yesterday").status_code == 400
    assert client.get(f"/jobs?before={10**30}.1").status_code == 400
    assert client.get("/jobs?after=1.99999999999999999999").status_code == 400
    # NUL fits in no text column: refused before it reaches the driver.
    for query in ({"queue": "a\x00b"}, {"type": "\x00"}, {"id": "x\x00"}):
        assert client.get("/jobs", params=query).status_code == 400
    assert client.get("/jobs/a%00b").status_code == 404
    unknown = client.get("/jobs/nope")
    assert unknown.status_code == 404 and "no job with id" in unknown.text


def test_keyset_pages_cover_every_job_once(queue: jobs.Queue, client: TestClient) -> None:
    # enqueue_many stamps one created_at on all: only the enqueue-order tie-breaker
    # tells them apart, so a page boundary inside equal timestamps is exercised.
    ids = queue.enqueue_many([("tick", {"n": n}) for n in range(120)])
    queue.enqueue_many([("tock", None) for _ in range(5)])
    newest_first = list(reversed(ids))
    pages, url = [], "/jobs?type=tick"
    while url:
        html = client.get(url).text
        pages.append(job_ids(html))
        match = re.search(r'rel="next" href="([^"]+)"', html)
        url = match.group(1).replace("&amp;", "&") if match else ""
    assert [len(p) for p in pages] == [50, 50, 20]
    assert [i for p in pages for i in p] == newest_first
    # Back from the last page: "newer" shows exactly the middle page again.
    newer = re.search(r'rel="prev" href="([^"]+)"', html)
    assert newer and "type=tick" in newer.group(1)
    assert job_ids(client.get(newer.group(1).replace("&amp;", "&")).text) == pages[1]
    assert "« Newest" in html


def test_job_page_shows_arguments_result_error(client: TestClient, made: Made) -> None:
    html = client.get(f"/jobs/{made.completed_plain}").text
    assert "&#34;name&#34;: &#34;Ada&#34;" in html  # arguments, pretty JSON
    assert "&#34;hello&#34;: &#34;Ada&#34;" in html  # result
    assert "Completed" in html and "deleted when it completes" in html
    failed = client.get(f"/jobs/{made.failed}").text
    assert 'id="job-error"' in failed and "RuntimeError: kaboom" in failed
    assert "Runs</dt><dd>1 of at most 1" in failed and "Failed permanently" in failed
    # The stored traceback, escaped, and the worker that ran it.
    traceback = failed[failed.index('id="job-traceback"') :]
    assert "raise RuntimeError(NASTY_ERROR)" in traceback[: traceback.index("</pre>")]
    assert "<img src=x" not in failed and "Last run on</dt>" in failed


def test_job_page_shows_each_durable_call(client: TestClient, made: Made) -> None:
    html = client.get(f"/jobs/{made.workflow}").text
    steps = html[html.index('<table class="steps">') : html.index("</table>", html.index("steps"))]
    rows = steps.split("<tr>")[2:]
    assert len(rows) == 2
    assert "<td>0</td>" in rows[0] and "charge" in rows[0] and "receipt-42" in rows[0]
    assert "<td>1</td>" in rows[1] and "ship" in rows[1] and "out of stock" in rows[1]
    assert re.search(r"<td>\d+ ms</td>", rows[1])  # timing since the previous step
    assert "Step 0 (charge) saved" in html and "Step 1 (ship) failed" in html
    assert "NoRetry: out of stock" in html


def test_fragment_is_the_live_region_only(client: TestClient, made: Made) -> None:
    for path in ("/", "/jobs", f"/jobs/{made.workflow}", "/schedules", "/workers"):
        page = client.get(path).text
        fragment = client.get(path, params={"fragment": "1"})
        assert fragment.status_code == 200
        assert 'id="live" data-live data-interval="5000"' in page
        assert "<html" in page and "<header" in page
        assert "<html" not in fragment.text and "<header" not in fragment.text
        assert fragment.text.split()[:3] == page.split('id="live"')[1].split(">", 1)[1].split()[:3]


def test_schedules_show_stored_and_declared(
    queue: jobs.Queue, storage: jobs.SQLStorage, client: TestClient
) -> None:
    assert "No schedules recorded" in client.get("/schedules").text
    last, next_ = utcnow() - timedelta(hours=1), utcnow() + timedelta(hours=23)
    storage.upsert_schedule("nightly", "daily 02:00 UTC", "ops", last, next_)
    queue.register("digest", lambda: None)
    queue.schedule("digest", jobs.every(minutes=5))
    html = client.get("/schedules").text
    nightly = html[html.index(">nightly<") : html.index("</tr>", html.index(">nightly<"))]
    assert "daily 02:00 UTC" in nightly and "ops" in nightly and "database" in nightly
    assert f"{last:%Y-%m-%d %H:%M:%S}" in nightly and f"{next_:%Y-%m-%d %H:%M:%S}" in nightly
    digest = html[html.index(">digest<") : html.index("</tr>", html.index(">digest<"))]
    assert "this app" in digest and "in " in digest  # next run computed from the spec


def test_workers_show_what_each_runs(queue: jobs.Queue, client: TestClient) -> None:
    release = threading.Event()
    queue.register("hold", lambda: release.wait(10))
    job_id = queue.enqueue("hold")
    try:
        with queue.worker(worker_id="w-dashboard", **FAST):
            wait_for(lambda: (j := queue.get_job(job_id)) and j.status == "running")
            html = wait_for(lambda: (t := client.get("/workers").text) and "w-dashboard" in t and t)
            start = html.index("<code>w-dashboard</code>")
            row = html[start : html.index("</tr>", start)]
            assert job_id in row and "hold" in row
            release.set()
    finally:
        release.set()
    assert "No live workers." in client.get("/workers").text


def test_overview_counts_are_shared_for_one_refresh_interval(queue: jobs.Queue) -> None:
    # Counting is the costly part on a big table: viewers polling together share it.
    client = TestClient(create_app(queue, refresh=60))
    assert card(client.get("/").text, "pending") == 0
    queue.enqueue("greet", {"name": "new"})
    assert card(client.get("/").text, "pending") == 0
    assert card(client.get("/?fragment=1").text, "pending") == 0
    assert card(TestClient(create_app(queue)).get("/").text, "pending") == 1
