"""The demo's application: the jobs that ``sdj demo`` enqueues and its workers run.

Worker processes load it as ``sdj worker durable_jobs.cli.demo_app:queue``. Every
handler appends a line to ``$SDJ_DEMO_DIR/runs.jsonl``, so the demo can count how often
each one really ran, across processes, including the worker it kills.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import durable_jobs as jobs

__all__ = ["QUEUE", "WORKFLOW_QUEUE", "build_queue", "queue", "read_runs"]

QUEUE = "sdj-demo"
WORKFLOW_QUEUE = "sdj-demo-workflow"
RUNS_FILE = "runs.jsonl"
FLAKY_SUCCEEDS_ON = 3
#: How long the workflow's middle step works: the window in which the demo kills it.
SLOW_STEP_SECONDS = 3.0


def _record(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, "pid": os.getpid(), "at": time.time(), **fields})
    # One short O_APPEND write per line: lines from concurrent processes never interleave.
    with open(Path(os.environ["SDJ_DEMO_DIR"]) / RUNS_FILE, "a") as runs:
        runs.write(line + "\n")


def read_runs(directory: Path) -> list[dict[str, Any]]:
    """Every execution recorded so far in ``directory``, oldest first."""
    path = directory / RUNS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def thumbnail(n: int) -> str:
    """A plain job."""
    _record("thumbnail", n=n)
    time.sleep(0.05 + (n % 4) * 0.05)
    return f"thumb-{n}.png"


def flaky_api() -> str:
    """Fails twice with a transient error, then succeeds: retried with backoff."""
    attempt = jobs.current_job().attempt
    _record("flaky-api", attempt=attempt)
    if attempt < FLAKY_SUCCEEDS_ON:
        raise ConnectionError(f"upstream timed out (attempt {attempt})")
    return "ok"


def import_file(name: str) -> None:
    """Bad input: NoRetry fails the job at once."""
    _record("import-file")
    raise jobs.NoRetry(f"{name} is not a CSV file")


def reminder(text: str) -> str:
    """Enqueued with a delay: must not start before its run time."""
    _record("reminder")
    return text


def tick() -> None:
    """Fired by the ``every`` schedule."""
    _record("tick")


def reserve_stock(order: dict[str, Any]) -> str:
    """Workflow step 0."""
    _record("step", step="reserve-stock")
    time.sleep(0.2)
    return f"reservation-{order['id']}"


def render_invoice(order: dict[str, Any]) -> str:
    """Workflow step 1: slow, so the demo can kill its worker in the middle of it."""
    _record("step", step="render-invoice")
    time.sleep(SLOW_STEP_SECONDS)
    return f"invoice-{order['id']}.pdf"


def send_confirmation(details: dict[str, Any]) -> None:
    """Workflow step 2."""
    _record("step", step="send-confirmation")
    time.sleep(0.1)


def process_order(order: dict[str, Any]) -> dict[str, Any]:
    """A workflow of three checkpointed steps: a re-run skips the steps already done."""
    _record("workflow", attempt=jobs.current_job().attempt)
    reservation = jobs.call("reserve-stock", order)
    invoice = jobs.call("render-invoice", order)
    jobs.call("send-confirmation", {"order": order["id"], "invoice": invoice})
    return {"reservation": reservation, "invoice": invoice}


def build_queue(storage: jobs.SQLStorage | str | None = None) -> jobs.Queue:
    """A Queue with the demo's jobs and schedule (``$SDJ_DATABASE_URL`` without storage)."""
    q = jobs.Queue(storage)
    q.register("thumbnail", thumbnail, queue=QUEUE)
    q.register("flaky-api", flaky_api, queue=QUEUE, retries=3, backoff=jobs.constant(0.3))
    q.register("import-file", import_file, queue=QUEUE)
    q.register("reminder", reminder, queue=QUEUE)
    q.register("tick", tick, queue=QUEUE)
    q.register("process-order", process_order, queue=WORKFLOW_QUEUE)
    for name, step in (
        ("reserve-stock", reserve_stock),
        ("render-invoice", render_invoice),
        ("send-confirmation", send_confirmation),
    ):
        q.register(name, step, queue=WORKFLOW_QUEUE)
    q.schedule("tick", jobs.every(seconds=1), queue=QUEUE)
    return q


queue = build_queue()
