"""``durable_jobs.contrib.django`` in a real Django project (tests/django_project), its
commands run as ``manage.py`` processes, on SQLite and PostgreSQL.

MySQL is left out: Django's MySQL backend needs mysqlclient, which the test
environment does not install (the library's own MySQL support uses PyMySQL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from tests.conftest import BACKENDS
from tests.contrib.servers import uvicorn
from tests.helpers import fresh_database, wait_for

PROJECT = Path(__file__).resolve().parents[1] / "django_project"
ROOT = PROJECT.parents[1]

Manage = Callable[..., str]


@pytest.fixture(params=[b for b in BACKENDS if b != "mysql"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: "sqlite" or "postgresql"."""
    return str(request.param)


def project_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SDJ_DATABASE_URL"}
    env["SHOP_DATABASE_URL"] = url
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def run_manage(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT,
        env=project_env(url, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def manager(url: str) -> Manage:
    def manage(*args: str) -> str:
        done = run_manage(url, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    return manage


# Server databases (one per test run) that have Django's tables already.
_migrated: set[str] = set()


@pytest.fixture
def manage(db_url: str, backend: str) -> Manage:
    """``manage.py`` of the project on a database with the jobs' and Django's tables, and
    no rows in Django's."""
    run = manager(db_url)
    if db_url in _migrated:
        run("flush", "--no-input")  # the server's database outlives a test
    else:
        run("migrate", "--run-syncdb", "-v", "0")
        if backend != "sqlite":  # a file per test
            _migrated.add(db_url)
    return run


def scenario(manage: Manage, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(manage("shop_scenario", name).strip().splitlines()[-1])
    return result


def test_sdj_migrate_creates_the_jobs_tables(backend: str, tmp_path: Path) -> None:
    with fresh_database(backend, tmp_path) as url:
        manage = manager(url)
        first = manage("sdj_migrate")
        again = manage("sdj_migrate")  # idempotent
        storage = jobs.SQLStorage(url)
        try:
            version = storage.schema_version()
            assert version > 0
            storage.require_schema()  # every migration this version knows is there
        finally:
            storage.close()
    for out in (first, again):
        assert f"durable_jobs schema at version {version} in " in out
        assert "postgres@" in out or "sqlite:///" in out


def test_a_job_exists_if_and_only_if_djangos_transaction_commits(
    manage: Manage, storage: jobs.SQLStorage
) -> None:
    out = scenario(manage, "transactions")

    def exists(job_id: str) -> bool:
        return storage.get_job(job_id) is not None

    assert exists(out["committed"]) and exists(out["outer"]) and exists(out["autocommit"])
    assert not exists(out["rolled_back"]) and not any(map(exists, out["rolled_back_many"]))
    assert not exists(out["in_savepoint"])  # rolled back to a savepoint taken before it
    first, second = out["unique"]
    assert first == second and exists(first)  # deduplicated inside the transaction
    with storage.engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT id FROM shop_order")).scalars().all()
        stored = conn.execute(sa.text("SELECT count(*) FROM sdj_jobs")).scalar()
    assert out["rolled_back_order"] not in ids  # the job went with the order
    assert stored == 4
    # JobEnqueued after the commit, and only for what was committed.
    assert out["seen_before_commit"] == []
    assert out["seen_after_commit"] == [out["committed"]]
    assert out["events"] == [out["outer"], out["autocommit"], first]


def test_sdj_worker_runs_the_committed_jobs_and_stops_on_sigterm(
    manage: Manage, db_url: str, storage: jobs.SQLStorage, tmp_path: Path
) -> None:
    placed = scenario(manage, "order")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "sdj_worker", "--queues", "default=2"],
            cwd=PROJECT,
            env=project_env(db_url),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        job = wait_for(
            lambda: (j := storage.get_job(placed["job"])) and j.status is jobs.JobStatus.COMPLETED
        )
        assert job
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    assert code == 0, log.read_text()
    done = storage.get_job(placed["job"])
    assert done is not None and done.result == b'"shipped 2 x lamp"'
    with storage.engine.connect() as conn:
        status = conn.execute(
            sa.text("SELECT status FROM shop_order WHERE id = :id"), {"id": placed["order"]}
        ).scalar()
    assert status == "shipped"  # the handler used the ORM


@pytest.fixture
def shop_server(manage: Manage, db_url: str, tmp_path: Path) -> Iterator[Any]:
    with uvicorn("project.asgi:application", PROJECT, project_env(db_url), tmp_path / "log") as c:
        yield c


def test_the_dashboard_is_mounted_beside_django_for_staff(manage: Manage, shop_server: Any) -> None:
    keys = scenario(manage, "sessions")
    placed = scenario(manage, "order")
    assert shop_server.get("/").text == "the shop"  # Django answers outside the mount
    assert shop_server.get("/jobs/").status_code == 403  # no session
    shop_server.cookies.set("sessionid", keys["customer"])
    assert shop_server.get("/jobs/").status_code == 403  # not staff
    shop_server.cookies.set("sessionid", keys["staff"])
    page = shop_server.get(f"/jobs/jobs/{placed['job']}")
    assert page.status_code == 200 and placed["job"] in page.text
    assert 'action="/jobs/actions/' in page.text  # staff may act too


def test_jobs_in_another_database_cannot_join_djangos_transaction(tmp_path: Path) -> None:
    django_db = f"sqlite:///{tmp_path / 'shop.db'}"
    jobs_db = f"sqlite:///{tmp_path / 'jobs.db'}"
    manager(django_db)("migrate", "--run-syncdb", "-v", "0")
    migrated = run_manage(django_db, "sdj_migrate", SHOP_JOBS_DATABASE_URL=jobs_db)
    assert migrated.returncode == 0 and jobs_db in migrated.stdout, migrated.stderr
    refused = run_manage(django_db, "shop_scenario", "order", SHOP_JOBS_DATABASE_URL=jobs_db)
    assert refused.returncode == 1
    assert "SDJ_DATABASE_URL names another database than Django's" in refused.stderr
    # The same database under another spelling of its path is Django's own.
    same = f"sqlite:///{tmp_path}/./shop.db"
    assert run_manage(django_db, "sdj_migrate", SHOP_JOBS_DATABASE_URL=same).returncode == 0
    placed = run_manage(django_db, "shop_scenario", "order", SHOP_JOBS_DATABASE_URL=same)
    assert placed.returncode == 0, placed.stderr
