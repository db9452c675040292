"""What the dashboard tests share: handlers, the jobs they make, and form helpers."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import durable_jobs as jobs

# Starlette 1.x asks for httpx2 in its TestClient and warns about httpx, which the older
# Starlette versions that the extra allows (>= 0.37) need; both work.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

from starlette.testclient import TestClient  # noqa: E402

__all__ = [
    "FAST",
    "NASTY_ERROR",
    "SCRIPT_ARGS",
    "Made",
    "TestClient",
    "csrf_of",
    "post_action",
    "register",
]

SCRIPT_ARGS = {"name": "<script>window.pwned = 1</script>", "note": "a & b \"quoted\" 'single'"}
NASTY_ERROR = 'kaboom <img src=x onerror="window.pwned = 2">'
FAST = {"poll_interval": 0.05, "lock_timeout": 5}


@dataclass(frozen=True)
class Made:
    """Ids of the jobs the ``made`` fixture produced, by what happened to them."""

    completed: str  # greet, with <script> in its arguments
    completed_plain: str  # greet
    failed: str  # explode: an error with HTML in it
    workflow: str  # order: step charge saved, step ship failed with NoRetry
    due: str  # enqueued after the worker stopped, on queue "idle"
    later: str  # due in an hour


def register(queue: jobs.Queue) -> None:
    """The handlers the dashboard tests use."""

    @queue.job()
    def greet(args: dict[str, str]) -> dict[str, str]:
        return {"hello": args["name"]}

    @queue.job(retries=0)
    def explode() -> None:
        raise RuntimeError(NASTY_ERROR)

    @queue.job()
    def charge(amount: int) -> str:
        return f"receipt-{amount}"

    @queue.job()
    def ship() -> None:
        raise jobs.NoRetry("out of stock")

    @queue.job(retries=0)
    def order() -> None:
        jobs.call("charge", 42)
        jobs.call("ship")


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no action form"
    return match.group(1)


def post_action(client: TestClient, page: str, action: str, **fields: str) -> object:
    """Load ``page`` (which sets the CSRF cookie), then POST its token with ``fields``."""
    token = csrf_of(client.get(page).text)
    return client.post(action, data={"csrf": token, **fields}, follow_redirects=False)
