"""The dashboard mounted under a path prefix inside another Starlette application."""

from __future__ import annotations

import re

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

import durable_jobs as jobs
from durable_jobs.dashboard import create_app

from .helpers import Made, TestClient, csrf_of

PREFIX = "/ops/jobs"


def parent_app(queue: jobs.Queue) -> Starlette:
    async def home(request: Request) -> Response:
        return PlainTextResponse("the host application")

    dashboard = create_app(queue, auth=lambda request: True)
    return Starlette(routes=[Route("/", home), Mount(PREFIX, app=dashboard)])


def test_links_assets_and_actions_follow_the_mount(queue: jobs.Queue, made: Made) -> None:
    client = TestClient(parent_app(queue))
    assert client.get("/").text == "the host application"
    overview = client.get(f"{PREFIX}/")
    assert overview.status_code == 200
    # The token cookie belongs to the dashboard's path, not the host application.
    assert f"Path={PREFIX}" in overview.headers["set-cookie"]
    links = re.findall(r'(?:href|src|action)="([^"]+)"', overview.text)
    local = [link for link in links if not link.startswith("data:")]
    assert local and all(link.startswith(PREFIX + "/") for link in local), local
    for asset in ("dashboard.js", "dashboard.css"):
        assert client.get(f"{PREFIX}/static/{asset}").status_code == 200
    jobs_page = client.get(f"{PREFIX}/jobs?status=failed").text
    assert f'href="{PREFIX}/jobs/{made.failed}"' in jobs_page
    page = client.get(f"{PREFIX}/jobs/{made.failed}")
    assert f'action="{PREFIX}/actions/retry"' in page.text
    response = client.post(
        f"{PREFIX}/actions/retry",
        data={"csrf": csrf_of(page.text), "id": made.failed},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"{PREFIX}/jobs/{made.failed}?done=retried"
    found = client.get(f"{PREFIX}/jobs?id={made.failed}", follow_redirects=False)
    assert found.headers["location"] == f"{PREFIX}/jobs/{made.failed}"
    assert client.get(f"{PREFIX}/jobs?fragment=1").status_code == 200
    assert client.get("/jobs").status_code == 404  # nothing leaks outside the mount
