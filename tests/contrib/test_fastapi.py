"""``durable_jobs.contrib.fastapi`` through ``examples/fastapi_app.py`` served by uvicorn
in a real server process, on every backend; and the lifespan without a worker."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

import durable_jobs as jobs
from durable_jobs.contrib.fastapi import lifespan
from tests.contrib.servers import uvicorn
from tests.dashboard.helpers import TestClient
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shop(db_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    """The example app on the backend under test, its worker in the server process."""
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:  # the app's tables, left by a test on the same server
        for table in ("orders", "stock"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if k != "SDJ_DATABASE_URL"}
    env["APP_DATABASE_URL"] = db_url
    with uvicorn("examples.fastapi_app:app", ROOT, env, tmp_path / "server.log") as client:
        yield client


def place(client: httpx.Client, quantity: int) -> tuple[str, httpx.Response]:
    ref = f"o-{uuid.uuid4().hex[:8]}"
    response = client.post("/orders", json={"ref": ref, "item": "book", "quantity": quantity})
    return ref, response


def events(client: httpx.Client, kind: str) -> list[str]:
    return [e["job_id"] for e in client.get("/activity").json() if e["event"] == kind]


def test_an_enqueue_commits_with_the_request_and_runs_in_the_server(
    shop: httpx.Client, queue: jobs.Queue
) -> None:
    ref, response = place(shop, 1)
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    assert shop.get(f"/orders/{ref}").status_code == 200  # committed before the response

    def shipped() -> dict[str, Any] | None:
        order: dict[str, Any] = shop.get(f"/orders/{ref}").json()
        return order if order["job"]["status"] == "completed" else None

    order = wait_for(shipped)
    assert order["status"] == "shipped" and order["job"]["result"] == f'"track-{ref}"'
    assert wait_for(lambda: events(shop, "JobCompleted")) == [job_id]
    assert events(shop, "JobEnqueued") == [job_id]
    job = queue.get_job(job_id)
    assert job is not None and job.args == f'"{ref}"'.encode()


def test_a_request_rolled_back_leaves_no_job_and_no_event(
    shop: httpx.Client, storage: jobs.SQLStorage
) -> None:
    refused, response = place(shop, 10)  # more than in stock: 409 after the enqueue
    assert response.status_code == 409, response.text
    assert shop.get(f"/orders/{refused}").status_code == 404
    # A committed order after it: once its job has run, the refused one's enqueue would
    # have been reported long before, as the server reports in order.
    _, response = place(shop, 1)
    kept = response.json()["job_id"]
    wait_for(lambda: events(shop, "JobCompleted") == [kept])
    assert events(shop, "JobEnqueued") == [kept]
    with storage.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT id FROM sdj_jobs")).scalars().all()
    assert stored == [kept]


def test_the_dashboard_is_behind_the_apps_login(shop: httpx.Client) -> None:
    _, response = place(shop, 1)
    job_id = response.json()["job_id"]
    asked = shop.get("/admin/jobs/")
    assert asked.status_code == 401 and asked.headers["www-authenticate"] == "Basic"
    assert shop.get("/admin/jobs/", auth=("ops", "wrong")).status_code == 403
    page = shop.get(f"/admin/jobs/jobs/{job_id}", auth=("ops", "change-me"))
    assert page.status_code == 200 and job_id in page.text
    assert 'action="/admin/jobs/actions/' in page.text  # the operator may act too


def test_a_web_only_lifespan_runs_no_worker(storage: jobs.SQLStorage) -> None:
    queue = jobs.Queue(storage)
    app = FastAPI(lifespan=lifespan(queue, worker=False))
    with TestClient(app):
        assert storage.live_workers(timedelta(minutes=1)) == []
    app = FastAPI(lifespan=lifespan(queue, worker_id="web-1"))
    with TestClient(app):
        assert [w.id for w in storage.live_workers(timedelta(minutes=1))] == ["web-1"]
    assert storage.live_workers(timedelta(minutes=1)) == []  # removed when it stopped
