"""``python -m bench [--quick] [--backend sqlite|postgresql|mysql] [--only SUBSTRING] [--list]``.

Runs every workload on every backend (or those given), with the reference ceilings
measured in the same run, and prints one table: each figure beside its target and its
ceiling. Figures are printed, never asserted: the exit status is 1 only when a workload
crashed. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sqlite3
import sys
import time
from pathlib import Path

from .database import admin_engine, autovacuum_off
from .report import render_table
from .sizes import FULL, QUICK
from .suite import WORKLOADS, run, select

BACKENDS = ("sqlite", "postgresql", "mysql")


def _server_version(backend: str) -> str:
    try:
        engine = admin_engine(backend)
        query = "SHOW server_version" if backend == "postgresql" else "SELECT VERSION()"
        with engine.connect() as conn:
            version = str(conn.exec_driver_sql(query).scalar())
        engine.dispose()
        return version.split()[0]
    except Exception as exc:  # reported by the workloads themselves
        return f"unreachable ({type(exc).__name__})"


def _context(backends: list[str], quick: bool) -> str:
    """One line on what ran where: enough to tell two runs' conditions apart."""
    parts = [
        "quick run" if quick else "full run",
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"Python {platform.python_version()}",
        f"SQLite {sqlite3.sqlite_version}",
    ]
    if "postgresql" in backends:
        parts.append(f"PostgreSQL {_server_version('postgresql')}{_autovacuum()}")
    if "mysql" in backends:
        version = _server_version("mysql")
        name = "MariaDB" if "MariaDB" in version else "MySQL"
        parts.append(f"{name} {version.split('-')[0]}")
    writeback = _writeback()
    if writeback:
        parts.append(writeback)
    return "; ".join(parts)


def _writeback() -> str:
    """How much written data Linux lets wait in memory, and for how long: what it writes
    back at once then stalls every commit behind it (docs/benchmarks.md, stalls)."""
    vm = "/proc/sys/vm"
    try:
        names = ("dirty_background_bytes", "dirty_background_ratio", "dirty_expire_centisecs")
        limit, ratio, expire = (int(Path(vm, name).read_text()) for name in names)
        total_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return ""
    held = limit if limit else total_kb * 1024 * ratio // 100
    held_mb, after_s = held / 2**20, expire / 100
    return f"kernel write-back from {held_mb:,.0f} MB of dirty pages or after {after_s:.0f} s"


def _autovacuum() -> str:
    """A mark for the server's version when it runs without autovacuum: the long
    drains then have a stand-in run it (bench/database.py)."""
    try:
        off = autovacuum_off()
    except Exception:  # unreachable: the version says so
        return ""
    return " (autovacuum off)" if off else ""


def _exit_on_sigterm() -> None:
    # SIGTERM would end the process without unwinding; as SystemExit it runs every
    # finally block, so worker processes are stopped and databases dropped.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (CI): smaller sizes")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        action="append",
        help="repeat for several (default: all three)",
    )
    parser.add_argument(
        "--only",
        metavar="SUBSTRING",
        help="run the workloads whose name has it (a whole name: that one)",
    )
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args()
    if args.list:
        for workload in WORKLOADS:
            print(f"{workload.name:<24}{workload.about}")
        return 0
    chosen = select(args.only)
    if not chosen:
        parser.error(f"no workload name contains {args.only!r} (see --list)")
    backends = args.backend or list(BACKENDS)
    _exit_on_sigterm()
    print(_context(backends, args.quick), flush=True)
    began = time.monotonic()
    results = run(backends, QUICK if args.quick else FULL, chosen)
    print()
    print(render_table(results))
    for note in (n for r in results for n in r.notes):
        print()
        print(note)
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"\nFAILED: {r.backend} {r.workload}: {r.error}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n{time.monotonic() - began:.0f} s; load average at the end {load}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
