"""A worker process for the shutdown tests: one slot, a handler that never returns.

python -m tests.procs.shutdown_app SHUTDOWN_TIMEOUT   (database from $SDJ_DATABASE_URL)

It configures no logging, so ``run()`` sets up its own (to stderr).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import durable_jobs as jobs

queue = jobs.Queue()


@queue.job()
def block(marker: str) -> None:
    """Says it started (writes ``marker``), then blocks for good."""
    Path(marker).write_text("running")
    threading.Event().wait()


if __name__ == "__main__":
    worker = jobs.Worker(
        queue,
        {"default": 1},
        lock_timeout=30,
        poll_interval=0.1,
        shutdown_timeout=float(sys.argv[1]),
    )
    worker.run()
