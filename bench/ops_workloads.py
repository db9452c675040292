"""Operations at scale: a filtered first page of ``list_jobs`` with a big table, and
pruning a big table of finished jobs while a worker drains a steady stream of jobs.

The table is filled in the database (recursive CTEs, ``generate_series``), labels too,
as migration 12 would have written them: a million rows take seconds, not an hour of
enqueues.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs.job import utcnow

from . import disk
from .database import Vacuum, autovacuum_standin, backend_of, connect, database, queue_on
from .report import Figure, Result
from .sizes import CONCURRENCY, Sizes, count

# A page flushed this slowly holds up every commit behind it: a drain's stall that
# overlaps one is the disk's.
_SLOW_FLUSH = 0.05

__all__ = ["list_jobs_big_table", "prune_while_draining"]

# One row per i: every 10th of status a, every 10th (+1) of status b, the rest completed;
# 20 types; created 30 days ago, a millisecond apart. (MOD, not %: the drivers of
# PostgreSQL and MySQL read % in a statement with parameters as a placeholder.)
_STATUS = "CASE {mod} WHEN 0 THEN '{a}' WHEN 1 THEN '{b}' ELSE 'completed' END"
_COLUMNS = "id, type, args, queue, priority, status, attempt, max_retries, run_at, created_at,"
_COLUMNS += " updated_at, finished_at"
_FILL = {
    "sqlite": f"""INSERT INTO sdj_jobs ({_COLUMNS})
        WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :rows),
            t(i, at) AS (SELECT i, strftime('%Y-%m-%d %H:%M:%S', :start + i / 1000, 'unixepoch')
                || printf('.%06d', (i % 1000) * 1000) FROM s)
        SELECT printf('%012d', i) || lower(hex(randomblob(8))), 'type-' || (i % 20), 'null',
            'default', 0, {{status}}, 1, 3, at, at, at, at FROM t""",
    "postgresql": f"""INSERT INTO sdj_jobs ({_COLUMNS})
        SELECT lpad(i::text, 12, '0') || md5(i::text), 'type-' || MOD(i, 20), 'null', 'default',
            0, {{status}}, 1, 3, t, t, t, t
        FROM (SELECT i, %(start)s::timestamptz + i * interval '1 millisecond' AS t
              FROM generate_series(1, %(rows)s) AS i) AS s""",
    "mysql": f"""INSERT INTO sdj_jobs ({_COLUMNS})
        WITH RECURSIVE d(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM d WHERE i < 999)
        SELECT CONCAT(LPAD(i, 12, '0'), MD5(i)), CONCAT('type-', MOD(i, 20)), 'null', 'default',
            0, {{status}}, 1, 3, t, t, t, t
        FROM (SELECT a.i * 1000 + b.i + 1 AS i,
                TIMESTAMP(%(start)s) + INTERVAL (a.i * 1000 + b.i + 1) * 1000 MICROSECOND AS t
              FROM d AS a CROSS JOIN d AS b WHERE a.i * 1000 + b.i < %(rows)s) AS s""",
}
# Labels as the triggers write them: tag-(n % 100) and meta tenant t-(n % 1000).
_POSITION = {"sqlite": "rowid", "postgresql": "seq", "mysql": "seq"}
_CONCAT = {
    "sqlite": "'{p}' || ({n} % {m})",
    "postgresql": "'{p}' || MOD({n}, {m})",
    "mysql": "CONCAT('{p}', MOD({n}, {m}))",
}
_LABELS = """INSERT INTO sdj_job_labels (kind, label, value, created, job_seq, job_id)
    SELECT {kind}, {label}, {value}, created_at, {n}, id FROM sdj_jobs"""


def _fill(url: str, rows: int, statuses: tuple[str, str], labels: bool) -> float:
    """Add ``rows`` jobs created 30 days ago (see ``_STATUS``), labelled if ``labels``;
    returns the seconds taken."""
    backend = backend_of(url)
    start = utcnow() - timedelta(days=30)
    began = time.perf_counter()
    mod = "i % 10" if backend == "sqlite" else "MOD(i, 10)"
    status = _STATUS.format(mod=mod, a=statuses[0], b=statuses[1])
    sql = _FILL[backend].format(status=status)
    with connect(url) as conn:
        if backend == "sqlite":
            conn.execute(sql, {"start": int(start.timestamp()), "rows": rows})
        elif backend == "mysql":
            conn.execute(sql, {"start": start.replace(tzinfo=None), "rows": rows})
        else:
            conn.execute(sql, {"start": start, "rows": rows})
        if labels:
            n = _POSITION[backend]
            tag = _CONCAT[backend].format(p="tag-", n=n, m=100)
            tenant = _CONCAT[backend].format(p="t-", n=n, m=1000)
            conn.execute(_LABELS.format(kind="'t'", label=tag, value="''", n=n))
            conn.execute(_LABELS.format(kind="'m'", label="'tenant'", value=tenant, n=n))
        for table in ("sdj_jobs", "sdj_job_labels"):
            conn.execute(f"ANALYZE {'TABLE ' if backend == 'mysql' else ''}{table}")
        # The fill's pages reach the table files now, not during what is measured next.
        if backend == "postgresql":
            conn.execute("CHECKPOINT")
        elif backend == "sqlite":
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - began


def _first_page_ms(queue: jobs.Queue, filters: dict[str, Any], samples: int = 15) -> float:
    """The median milliseconds of ``list_jobs(**filters)``'s first page of 100."""
    queue.list_jobs(**filters)  # warm: connection, plan cache
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        page = queue.list_jobs(**filters)
        times.append((time.perf_counter() - start) * 1000)
        assert page.jobs, f"nothing found for {filters}"
    return statistics.median(times)


_SEARCHES: dict[str, dict[str, Any]] = {
    "tag": {"tag": "tag-7"},
    "meta": {"meta": {"tenant": "t-7"}},
    "tag.failed": {"tag": "tag-10", "status": "failed"},
    "failed.type": {"status": "failed", "type": "type-10"},
    "any": {},
}


def list_jobs_big_table(backend: str, sizes: Sizes) -> Result:
    """``list_jobs`` first pages (limit 100) with ``sizes.ops_rows`` jobs in the table, each
    labelled with one of 100 tags and one of 1,000 tenants (median of 15 calls)."""
    rows = sizes.ops_rows
    with database(backend) as url:
        seconds = _fill(url, rows, ("failed", "pending"), labels=True)
        with queue_on(url) as queue:
            figures = [
                Figure(
                    f"list.{name}",
                    f"list_jobs first page, {_describe(filters)}, {count(rows)} jobs",
                    _first_page_ms(queue, filters),
                    "ms",
                )
                for name, filters in _SEARCHES.items()
            ]
            plan = _tag_plan(queue)
    notes = [f"{backend}: filled {rows:,} jobs and their labels in {seconds:.1f} s", plan]
    return Result(backend, "list-jobs", figures, notes)


def _describe(filters: dict[str, Any]) -> str:
    if not filters:
        return "no filter"
    return " ".join(
        f"{k}={v}" if not isinstance(v, dict) else " ".join(f"meta {a}={b}" for a, b in v.items())
        for k, v in filters.items()
    )


def _tag_plan(queue: jobs.Queue) -> str:
    """The database's plan of the search by tag (as ``list_jobs`` sends it)."""
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    d = storage.dialect
    text = d.admin_sql["labelled_page"].format(filters="", order="DESC")
    params = {"kind": "t", "label": "tag-7", "value": "", "limit": 101}
    explain = "EXPLAIN QUERY PLAN " if d.name == "sqlite" else "EXPLAIN "
    with storage._cursor() as cur:
        cur.execute(explain + text, params)
        lines = [" ".join(str(v) for v in row if v is not None) for row in cur.fetchall()]
    return f"{d.name} plan of the search by tag:\n" + "\n".join("    " + ln for ln in lines)


def prune_while_draining(backend: str, sizes: Sizes) -> Result:
    """Prune ``sizes.ops_rows`` completed jobs (finished 30 days ago) while an in-process
    worker drains a steady stream of no-op jobs: first by ``queue.prune`` in the
    draining process (as a worker's ``retention=`` does), then, the table filled again,
    by ``sdj prune`` in a process of its own (as an operator does). The longest gap
    between two completions of the drain while a prune ran is its longest stall; beside
    them, the drain's own longest stall alone, over as long a window."""
    rows = sizes.ops_rows
    with database(backend) as url:
        fill_s = _fill(url, rows, ("completed", "completed"), labels=False)
        with (
            autovacuum_standin(url) as vacuums,
            disk.fsync_probe(_probe_dir(url)) as flushes,
            queue_on(url) as queue,
        ):
            queue.register("noop", lambda: None)
            stamps: list[float] = []
            queue.on_job_complete(lambda job: stamps.append(time.perf_counter()))
            stop = threading.Event()
            feeder = threading.Thread(target=_feed, args=(queue, stamps, stop), daemon=True)
            feeder.start()
            with queue.worker({"default": CONCURRENCY}, poll_interval=0.1):
                # As worker.run() does (docs/jobs-and-workers.md), and as the docs
                # advise for a worker started inside a program: else the drain's full
                # garbage collections (30-60 ms) set its longest stalls, pruning or not.
                gc.freeze()
                time.sleep(1)  # under way
                began = time.perf_counter()
                deleted = queue.prune(timedelta(days=7))
                ended = time.perf_counter()
                # The drain alone as long again (at most a minute): its own longest
                # stall on this machine, over a window as long, to compare with.
                time.sleep(min(ended - began, 60))
                alone = time.perf_counter()
                _fill(url, rows, ("completed", "completed"), labels=False)
                # The fill's bulk insert and checkpoint stall the drain too: the prune
                # starts on a drain under way again, as the first one did.
                time.sleep(1)
                other_began = time.perf_counter()
                other_deleted = _prune_elsewhere(url)
                other_ended = time.perf_counter()
                stop.set()
                feeder.join(10)
                gc.unfreeze()
            during = _longest_gap(stamps, began, ended)
            before = _longest_gap(stamps, ended, alone)
            elsewhere = _longest_gap(stamps, other_began, other_ended)
            drained = sum(1 for t in stamps if began <= t <= ended)
    prune_s = ended - began
    return Result(
        backend,
        "prune-while-draining",
        [
            Figure(
                "prune.rate", f"prune {count(rows)} completed jobs", deleted / prune_s, "jobs/s"
            ),
            Figure(
                "ref.prune.disk",
                "longest disk flush while pruning",
                disk.longest(flushes, began, ended) * 1000,
                "ms",
            ),
            Figure(
                "prune.stall",
                "longest drain stall while pruning",
                during * 1000,
                "ms",
                "ref.prune.disk",
            ),
            Figure(
                "prune.stall.ref", "longest drain stall without pruning, after", before * 1000, "ms"
            ),
            Figure("prune.drain", "drain while pruning", drained / prune_s, "jobs/s"),
            Figure(
                "prune.other.rate",
                f"sdj prune of {count(rows)} in another process",
                other_deleted / (other_ended - other_began),
                "jobs/s",
            ),
            Figure(
                "ref.prune.other.disk",
                "longest disk flush while sdj prune runs",
                disk.longest(flushes, other_began, other_ended) * 1000,
                "ms",
            ),
            Figure(
                "prune.other.stall",
                "longest drain stall while sdj prune runs",
                elsewhere * 1000,
                "ms",
                "ref.prune.other.disk",
            ),
        ],
        [
            f"{backend}: filled {rows:,} completed jobs in {fill_s:.1f} s; deleted {deleted:,}",
            f"{backend}: drain stalls over 100 ms (of them, as the disk took over "
            f"{_SLOW_FLUSH * 1000:.0f} ms to flush a page; as a VACUUM ran) [when, from "
            "the window's start]: "
            + "; ".join(
                "{} ({}; {}) [{}] in {:.0f} s {}".format(
                    *_stalls(stamps, start, end, flushes, vacuums), end - start, what
                )
                for what, start, end in (
                    ("while pruning", began, ended),
                    ("alone, after", ended, alone),
                    ("while sdj prune runs", other_began, other_ended),
                )
            ),
            *_vacuum_note(backend, vacuums, began),
        ],
    )


def _vacuum_note(backend: str, vacuums: list[Vacuum], began: float) -> list[str]:
    """What the stand-in for autovacuum ran, if it ran (times from the first prune's
    start)."""
    if not vacuums:
        return []
    ran = ", ".join(
        f"{v.action} {v.table} at {v.began - began:.0f} s ({v.seconds:.1f} s)" for v in vacuums
    )
    return [f"{backend}: autovacuum is off on the server; in its stead the bench ran {ran}"]


def _prune_elsewhere(url: str) -> int:
    """Run ``sdj prune`` of the jobs finished over a week ago in a process of its own;
    returns how many it deleted."""
    command = [sys.executable, "-m", "durable_jobs.cli", "prune", "--older-than", "7d"]
    done = subprocess.run(
        [*command, "--json", "--database-url", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    )
    return int(json.loads(done.stdout)["deleted"])


def _feed(queue: jobs.Queue, stamps: list[float], stop: threading.Event) -> None:
    """Keep about 2,000 jobs ahead of the drain until ``stop``."""
    enqueued = 0
    while not stop.is_set():
        if enqueued - len(stamps) < 2_000:
            queue.enqueue_many([("noop", None)] * 500)
            enqueued += 500
        else:
            stop.wait(0.005)


def _stalls(
    stamps: list[float],
    start: float,
    end: float,
    flushes: list[tuple[float, float]],
    vacuums: list[Vacuum],
    over: float = 0.1,
) -> tuple[int, int, int, str]:
    """How many gaps between completions within the window are longer than ``over``,
    how many of those overlap a disk flush slower than ``_SLOW_FLUSH``, how many
    overlap a VACUUM of the stand-in for autovacuum, and when the first few began."""
    slow = [(began, began + took) for began, took in flushes if took > _SLOW_FLUSH]
    ran = [(v.began, v.began + v.seconds) for v in vacuums]
    stalls = [(a, b) for a, b in _gaps(stamps, start, end) if b - a > over]
    when = ", ".join(f"{a - start:.0f} s" for a, _b in stalls[:8])
    return len(stalls), _overlapping(stalls, slow), _overlapping(stalls, ran), when


def _overlapping(spans: list[tuple[float, float]], others: list[tuple[float, float]]) -> int:
    """How many of ``spans`` overlap any of ``others``."""
    return sum(1 for a, b in spans if any(s < b and a < e for s, e in others))


def _longest_gap(stamps: list[float], start: float, end: float) -> float:
    """The longest time between completions (or an end of the window) within it."""
    return max(b - a for a, b in _gaps(stamps, start, end))


def _gaps(stamps: list[float], start: float, end: float) -> list[tuple[float, float]]:
    """The spans between completions (and the window's ends) within the window."""
    inside = [start, *(t for t in stamps if start <= t <= end), end]
    return list(itertools.pairwise(inside))


def _probe_dir(url: str) -> str:
    """Where to measure the disk: beside an SQLite file, else on the local disk."""
    if backend_of(url) == "sqlite":
        return os.path.dirname(sa.make_url(url).database or "") or disk.PROBE_DIR
    return disk.PROBE_DIR
