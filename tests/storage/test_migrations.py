"""Conformance of ``SQLStorage``: migrating the schema and reading its version, on every backend."""

from __future__ import annotations

import subprocess
import sys
import threading

import sqlalchemy as sa

from durable_jobs.job import JobStatus
from durable_jobs.storage import SQLStorage

from .helpers import get, make_job, sql

# -- migrate ------------------------------------------------------------------------------


def test_migrate_is_idempotent(storage: SQLStorage) -> None:
    latest = len(storage.dialect.migrations)
    storage.migrate()
    storage.migrate()
    assert storage.schema_version() == latest
    rows = sql(storage, "SELECT version FROM sdj_schema_version ORDER BY version")
    assert [r[0] for r in rows] == list(range(1, latest + 1))
    # Migrating again leaves data alone.
    job_id = storage.enqueue(make_job())
    storage.migrate()
    assert get(storage, job_id).status == JobStatus.PENDING


_MIGRATE_IN_PROCESS = """
import sys
import durable_jobs as jobs
storage = jobs.SQLStorage(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
storage.migrate()
storage.close()
"""


def test_migrate_concurrently_from_threads_and_processes(fresh_url: str) -> None:
    n_threads, n_procs = 4, 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_IN_PROCESS, fresh_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n_procs)
    ]
    storages = [SQLStorage(fresh_url) for _ in range(n_threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads + 1)

    def migrate(storage: SQLStorage) -> None:
        barrier.wait()
        try:
            storage.migrate()
        except BaseException as exc:
            errors.append(exc)

    try:
        for p in procs:  # every process has imported the library and waits for the signal
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        threads = [threading.Thread(target=migrate, args=(s,)) for s in storages]
        for t in threads:
            t.start()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        barrier.wait()
        for t in threads:
            t.join(60)
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert errors == []
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    storage = storages[0]
    latest = len(storage.dialect.migrations)
    rows = sql(storage, "SELECT version, count(*) FROM sdj_schema_version GROUP BY version")
    assert sorted((r[0], r[1]) for r in rows) == [(v, 1) for v in range(1, latest + 1)]
    assert storage.schema_version() == latest
    job_id = storage.enqueue(make_job())  # the schema works
    assert get(storage, job_id).type == "t"
    for s in storages:
        s.close()


# -- schema version -----------------------------------------------------------------------


# SQLite only as written (it names a SQLite file; no backend fixture), though nothing in it
# is SQLite's own: taking `fresh_url` instead would run it on every backend.
def test_schema_version_of_an_empty_database_reads_only(fresh_url: str) -> None:
    empty = SQLStorage(fresh_url)
    try:
        assert empty.schema_version() == 0
        assert sa.inspect(empty.engine).get_table_names() == []
    finally:
        empty.close()
