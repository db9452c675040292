"""A real headless Chromium reads the job page's explain panel as the job's condition
changes (a pause clicked on the page, a queue paused elsewhere), then the workers page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

import durable_jobs as jobs
from durable_jobs.dashboard import create_app
from tests.helpers import wait_for

from .test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, serve


def test_the_explain_panel_follows_the_job(queue: jobs.Queue, backend: str) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium", pytrace=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    @queue.job(queue="emails")
    def send(to: str) -> str:
        return to

    job_id = queue.enqueue("send", "ada@example.com")
    app = create_app(queue, auth=lambda request: True, refresh=0.5)
    problems: list[str] = []

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=ARTIFACTS / f"explain-{backend}-{name}.png", full_page=True)

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":  # a CSP violation shows here
            problems.append(message.text)

    with serve(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", console)
            page.on("pageerror", lambda error: problems.append(str(error)))
            panel = page.locator("#job-explain")

            page.goto(f"{url}/jobs/{job_id}")
            expect(page.locator("#job-explain-reason")).to_have_text("no_worker_for_queue")
            expect(page.locator("#job-explain-message")).to_have_text(
                "No live worker serves its queue 'emails'."
            )
            expect(panel).to_be_visible()
            shot(page, "1-no-worker")

            page.locator("#pause").click()
            expect(page.locator(".flash.ok")).to_contain_text("Job paused")
            expect(page.locator("#job-explain-reason")).to_have_text("job_paused")
            expect(page.locator("#job-explain-facts")).to_contain_text("resumes to")
            shot(page, "2-job-paused")

            page.locator("#resume").click()
            expect(page.locator("#job-explain-reason")).to_have_text("no_worker_for_queue")

            # Paused elsewhere: the open page follows without a reload.
            page.evaluate("window.sameDocument = true")
            queue.pause_queue("emails")
            expect(page.locator("#job-explain-reason")).to_have_text("queue_paused")
            expect(page.locator("#job-explain-message")).to_contain_text("'emails' is paused")
            assert page.evaluate("window.sameDocument") is True
            shot(page, "3-queue-paused")

            queue.resume_queue("emails")
            with queue.worker(queues=["other"], poll_interval=0.05, lock_timeout=5) as worker:
                wait_for(lambda: queue.storage.live_workers(timedelta(minutes=1)), timeout=15)
                page.get_by_role("link", name="Workers", exact=True).click()
                expect(page.locator("h1")).to_have_text("Workers")
                row = page.locator("tr", has_text=worker.id)
                expect(row.locator(".worker-types")).to_have_text("send")
                expect(row).to_contain_text(jobs.__version__)
                shot(page, "4-workers")

                page.goto(f"{url}/jobs/{job_id}")
                expect(page.locator("#job-explain-reason")).to_have_text("no_worker_for_queue")
        finally:
            browser.close()
    assert problems == []


# The page's JavaScript is the same on every backend.
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_button_held_while_the_page_refreshes_still_clicks(queue: jobs.Queue) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium", pytrace=False)

    @queue.job()
    def send(to: str) -> str:
        return to

    job_id = queue.enqueue("send", "ada@example.com")
    app = create_app(queue, auth=lambda request: True, refresh=0.2)
    with serve(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{url}/jobs/{job_id}")
            expect(page.locator("#pause")).to_be_visible()
            # Read in one go in the page: a refresh may swap the button between the
            # steps of a locator's bounding_box(). Every copy sits at the same place.
            box = page.evaluate(
                "() => { const r = document.getElementById('pause').getBoundingClientRect();"
                " return [r.x + r.width / 2, r.y + r.height / 2]; }"
            )
            page.mouse.move(*box)
            page.mouse.down()
            # Two refreshes end while the button is held: the second starts only after
            # the first has been handled, when a swap would have replaced the button.
            for _ in range(2):
                with page.expect_response(lambda response: "fragment=1" in response.url):
                    pass
            page.mouse.up()
            expect(page.locator(".flash.ok")).to_contain_text("Job paused")
            job = queue.get_job(job_id)
            assert job is not None and job.status is jobs.JobStatus.PAUSED
        finally:
            browser.close()
