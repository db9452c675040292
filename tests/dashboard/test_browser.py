"""A real headless Chromium clicks through the dashboard: overview -> jobs -> job -> retry.

It drives Debian's ``chromium`` through Playwright's client (never a downloaded browser)
and fails, rather than skips, when Chromium is missing: CI installs it (``.ci/run``).
Screenshots land in ``tests/artifacts/`` for CI to keep.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright
from starlette.applications import Starlette

import durable_jobs as jobs
from durable_jobs.dashboard import create_app
from tests.helpers import wait_for

from .helpers import Made

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_click_through_to_retry_a_failed_job(
    queue: jobs.Queue, storage: jobs.SQLStorage, made: Made, backend: str
) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium", pytrace=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    app = create_app(queue, auth=lambda request: True, refresh=0.5)
    problems: list[str] = []

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=ARTIFACTS / f"dashboard-{backend}-{name}.png", full_page=True)

    def console(message: ConsoleMessage) -> None:
        # A CSP violation (an inline script or style the page should not have) shows here.
        if message.type == "error":
            problems.append(message.text)

    with serve(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", console)
            page.on("pageerror", lambda error: problems.append(str(error)))

            page.goto(url + "/")
            expect(page.locator("h1")).to_have_text("Overview")
            expect(page.locator("svg.chart")).to_be_visible()
            shot(page, "1-overview")

            page.get_by_role("link", name="Jobs", exact=True).click()
            expect(page.locator("h1")).to_have_text("Jobs")
            expect(page.locator("a.id")).to_have_count(6)
            # The job whose arguments hold a <script> is listed; nothing ran.
            assert page.evaluate("window.pwned") is None
            shot(page, "2-jobs")

            page.locator("a.id", has_text=made.failed).click()
            expect(page.locator("#job-status")).to_have_text("failed")
            expect(page.locator("#job-error")).to_contain_text('kaboom <img src=x onerror="')
            shot(page, "3-job")

            page.locator("#retry").click()
            expect(page.locator(".flash.ok")).to_contain_text("Job retried")
            expect(page.locator("#job-status")).to_have_text("pending")
            shot(page, "4-retried")
            job = queue.get_job(made.failed)
            assert job is not None and job.status == "pending" and job.attempt == 0

            # Live update: the page follows the database without reloading.
            page.evaluate("window.sameDocument = true")
            [claimed] = storage.claim("default", "browser-worker", 1)
            assert claimed.id == made.failed
            expect(page.locator("#job-status")).to_have_text("running")
            expect(page.locator("#live-state")).to_contain_text("live ·")
            assert page.evaluate("window.sameDocument") is True
            shot(page, "5-live")

            page.goto(f"{url}/jobs/{made.completed}")
            expect(page.locator("#job-args")).to_contain_text("<script>window.pwned = 1</script>")
            assert page.evaluate("window.pwned") is None
            shot(page, "6-script-args-inert")
        finally:
            browser.close()
    assert problems == []
