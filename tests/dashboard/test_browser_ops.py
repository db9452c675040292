"""A real headless Chromium searches jobs by tag and meta, reads a failed job's attempt
history, and retries every failed job with the bulk button (confirming its dialog)."""

from __future__ import annotations

import pytest
from playwright.sync_api import ConsoleMessage, Dialog, Page, expect, sync_playwright

import durable_jobs as jobs
from durable_jobs.dashboard import create_app

from .helpers import Made
from .test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, serve


def test_search_then_bulk_retry(queue: jobs.Queue, made: Made, backend: str) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium", pytrace=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    acme = queue.enqueue("greet", {"name": "acme"}, tags=["vip"], meta={"tenant": "acme"})
    queue.enqueue("greet", {"name": "zeta"}, tags=["vip"], meta={"tenant": "zeta"})
    app = create_app(queue, auth=lambda request: True, refresh=0.5)
    problems: list[str] = []
    confirmed: list[str] = []

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=ARTIFACTS / f"ops-{backend}-{name}.png", full_page=True)

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":  # a CSP violation shows here
            problems.append(message.text)

    def confirm(dialog: Dialog) -> None:
        confirmed.append(dialog.message)
        dialog.accept()

    with serve(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", console)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("dialog", confirm)

            page.goto(url + "/jobs")
            page.locator("input[name=tag]").fill("vip")
            page.locator("input[name=meta]").fill("tenant=acme")
            page.get_by_role("button", name="Filter").click()
            expect(page.locator("a.id")).to_have_count(1)
            expect(page.locator("a.id")).to_have_text(acme)
            shot(page, "1-search")

            page.goto(f"{url}/jobs/{made.failed}")
            expect(page.locator("#job-attempts tbody tr")).to_have_count(1)
            expect(page.locator("#job-attempts")).to_contain_text("kaboom <img")
            shot(page, "2-attempts")

            page.goto(url + "/jobs")
            page.locator("select[name=status]").select_option("failed")
            page.get_by_role("button", name="Filter").click()
            expect(page.locator("a.id")).to_have_count(2)  # explode and order
            page.locator("#retry-failed").click()
            expect(page.locator(".flash.ok")).to_contain_text("Failed jobs retried")
            expect(page.locator("td.empty")).to_have_text("No jobs match.")
            shot(page, "3-bulk-retried")
            assert confirmed and "Retry every failed job" in confirmed[0]
            for job_id in (made.failed, made.workflow):
                job = queue.get_job(job_id)
                assert job is not None and job.status is jobs.JobStatus.PENDING
            assert page.evaluate("window.pwned") is None
        finally:
            browser.close()
    assert problems == []
