"""Dashboard benchmark: the jobs page on 1,000,000 jobs in PostgreSQL.

``python -m bench.dashboard_bench [--rows N] [--runs N] [--with-indexes]``

Fills a fresh database with generate_series (a few seconds), then times dashboard pages
through Starlette's test client: the first page and a deep keyset page, unfiltered and
with filters, plus the overview. Prints the median and 95th percentile in ms; the target
for the jobs page is < 200 ms. ``--with-indexes`` repeats the run after adding the
indexes that would serve the queue and type filters, to show what they buy.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import durable_jobs as jobs
from durable_jobs.dashboard import create_app
from durable_jobs.storage.admin import Cursor

from .database import database

# Starlette 1.x prefers httpx2 in its test client; httpx works the same.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
from starlette.testclient import TestClient  # noqa: E402

# 85 % completed, 7 % failed, 4 % pending, 3 % retrying, 0.1 % running, over 30 days;
# five types and four queues, spread so every combination occurs.
FILL = """
INSERT INTO sdj_jobs (id, type, args, queue, priority, status, attempt, max_retries,
    last_error, run_at, started_at, completed_at, created_at, updated_at, result, locked_by,
    heartbeat_at)
SELECT gen_random_uuid()::text,
    (ARRAY['send-email', 'charge', 'report', 'resize-image', 'sync'])[1 + i %% 5],
    '{"n": ' || i || ', "to": "user' || i || '@example.com"}',
    (ARRAY['default', 'default', 'emails', 'critical'])[1 + (i / 7) %% 4],
    0, st, 1, 3,
    CASE WHEN st IN ('failed', 'retrying') THEN 'RuntimeError: upstream timed out' END,
    created, created, CASE WHEN st IN ('completed', 'failed') THEN created + interval '2 s' END,
    created, created, CASE WHEN st = 'completed' THEN '{"ok": true}' END,
    CASE WHEN st = 'running' THEN 'bench-worker' END,
    CASE WHEN st = 'running' THEN now() END
FROM (
    SELECT i,
        now() - interval '30 days' * (1 - i::float8 / %(rows)s) AS created,
        CASE WHEN i %% 1000 < 850 THEN 'completed' WHEN i %% 1000 < 920 THEN 'failed'
             WHEN i %% 1000 < 960 THEN 'pending' WHEN i %% 1000 < 999 THEN 'retrying'
             ELSE 'running' END AS st
    FROM generate_series(1, %(rows)s) AS i
) AS s
"""

# What would let the queue and type filters walk an index in page order too, and the
# overview's per-minute counts find the last hour's finished jobs without a scan.
SUGGESTED_INDEXES = (
    "CREATE INDEX sdj_jobs_queue_status ON sdj_jobs (queue, status, created_at)",
    "CREATE INDEX sdj_jobs_type_status ON sdj_jobs (type, status, created_at)",
    "CREATE INDEX sdj_jobs_finished ON sdj_jobs (completed_at) WHERE completed_at IS NOT NULL",
)


def run_sql(
    storage: jobs.SQLStorage, *statements: str, params: dict[str, int] | None = None
) -> None:
    """Run statements outside a transaction (VACUUM needs that)."""
    raw = storage.engine.raw_connection()
    try:
        raw.driver_connection.autocommit = True
        with raw.cursor() as cur:
            for statement in statements:
                cur.execute(statement, params)
    finally:
        raw.close()


def fill(storage: jobs.SQLStorage, rows: int) -> None:
    """``rows`` jobs, then VACUUM ANALYZE so the planner and index-only scans see them."""
    start = time.perf_counter()
    run_sql(storage, FILL, params={"rows": rows})
    filled = time.perf_counter()
    run_sql(storage, "VACUUM ANALYZE sdj_jobs")
    print(
        f"filled {rows:,} jobs in {filled - start:.1f} s, "
        f"vacuum analyze {time.perf_counter() - filled:.1f} s"
    )


def cursor_at(storage: jobs.SQLStorage, offset: int, where: str = "TRUE") -> str:
    """The keyset token of the row ``offset`` rows down a listing (set-up only)."""
    with storage._cursor() as cur:
        cur.execute(
            f"SELECT created_at, seq FROM sdj_jobs WHERE {where} "
            "ORDER BY created_at DESC, seq DESC OFFSET %(offset)s LIMIT 1",
            {"offset": offset},
        )
        created_at, seq = cur.fetchone()
    return Cursor(created_at, seq).token()


def time_page(client: TestClient, url: str, runs: int) -> tuple[float, float]:
    """Median and 95th percentile of ``runs`` requests of ``url``, in ms (after a warm-up)."""
    response = client.get(url, follow_redirects=False)
    assert response.status_code in (200, 303), (url, response.status_code)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        client.get(url, follow_redirects=False)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[max(0, round(0.95 * len(samples)) - 1)]


def measure(storage: jobs.SQLStorage, rows: int, runs: int) -> None:
    """Print the timings of the pages worth knowing about."""
    client = TestClient(create_app(storage))
    middle = rows // 2
    with storage._cursor() as cur:
        cur.execute("SELECT id FROM sdj_jobs ORDER BY seq OFFSET %(o)s LIMIT 1", {"o": middle})
        some_id = cur.fetchone()[0]
    pages = [
        ("jobs, first page", "/jobs"),
        (f"jobs, keyset page at row {middle:,}", f"/jobs?before={cursor_at(storage, middle)}"),
        ("jobs, last page", f"/jobs?before={cursor_at(storage, rows - 20)}"),
        ("jobs ?status=failed", "/jobs?status=failed"),
        (
            "jobs ?status=failed, deep page",
            "/jobs?status=failed&before="
            + cursor_at(storage, rows * 7 // 200, "status = 'failed'"),
        ),
        ("jobs ?status=pending", "/jobs?status=pending"),
        ("jobs ?queue=emails", "/jobs?queue=emails"),
        ("jobs ?type=charge", "/jobs?type=charge"),
        (
            "jobs ?status=failed&queue=critical&type=report",
            "/jobs?status=failed&queue=critical&type=report",
        ),
        (
            "jobs ?type=charge, deep page",
            f"/jobs?type=charge&before={cursor_at(storage, middle)}",
        ),
        ("jobs ?queue=nope (matches nothing)", "/jobs?queue=nope"),
        ("jobs, live fragment", "/jobs?fragment=1"),
        ("jobs ?id=... (search, redirects)", f"/jobs?id={some_id}"),
        ("job detail", f"/jobs/{some_id}"),
        ("workers", "/workers"),
    ]
    # The overview shares its counts for one refresh interval; a tiny one times the count.
    recount = TestClient(create_app(storage, refresh=0.001))
    timed = [(name, url, client) for name, url in pages]
    timed.append(("overview, recounted (counts every job)", "/", recount))
    for name, url, via in timed:
        median, p95 = time_page(via, url, runs)
        flag = "" if not name.startswith("jobs") or median < 200 else "  over 200 ms"
        print(f"  {name:<52}{median:>9.1f} ms median {p95:>9.1f} ms p95{flag}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--with-indexes", action="store_true")
    args = parser.parse_args()
    with database("postgresql", "sdj_bench_dashboard") as url:
        storage = jobs.SQLStorage(url)
        fill(storage, args.rows)
        print(f"dashboard pages, {args.rows:,} jobs, PostgreSQL, {args.runs} runs each:")
        measure(storage, args.rows, args.runs)
        if args.with_indexes:
            start = time.perf_counter()
            run_sql(storage, *SUGGESTED_INDEXES, "ANALYZE sdj_jobs")
            print(f"with the suggested indexes (built in {time.perf_counter() - start:.1f} s):")
            measure(storage, args.rows, args.runs)
        storage.close()


if __name__ == "__main__":
    main()
