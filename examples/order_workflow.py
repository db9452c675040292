"""A checkpointed order workflow: charge, reserve, ship, notify.

The shipping service is down for each order's first shipping request (a marker file
records that request; the retry finds it), so the first run of ``place_order`` fails
after charging and reserving. The job is retried, and the second run replays the
charge and the reservation from their checkpoints instead of running them again. One
run shows it:

    python examples/order_workflow.py

The workflow never looks at ``current_job().attempt`` to decide what to do: on a
replay the same code makes the same calls, and the checkpoints answer the ones that
already ran.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import durable_jobs as jobs

queue = jobs.Queue("sqlite:///orders.db")
executions: Counter[str] = Counter()  # how often each handler really ran, for the summary


@dataclass
class Order:
    id: str
    cents: int
    items: list[str]


@dataclass
class Receipt:
    charge_id: str
    cents: int


@queue.job("charge-payment")
def charge(order: Order) -> Receipt:
    executions["charge-payment"] += 1
    print(f"  charging {order.cents} cents for {order.id}")
    return Receipt(charge_id=f"ch_{order.id}", cents=order.cents)


@queue.job("reserve-stock")
def reserve(items: list[str]) -> list[str]:
    executions["reserve-stock"] += 1
    print(f"  reserving {items}")
    return [f"res_{item}" for item in items]


@queue.job("ship-order")
def ship(order: Order) -> str:
    executions["ship-order"] += 1
    # The simulated outage: the first request for this job finds no marker, leaves one
    # and fails; the next finds it and gets through. (current_job() in a step is the
    # workflow's job, whose id is the same on every run.)
    marker = Path(f"shipping-request-{jobs.current_job().id}")
    if not marker.exists():
        marker.touch()
        print(f"  shipping {order.id}: the shipping service is down")
        raise ConnectionError("the shipping service is down")
    marker.unlink()
    print(f"  shipping {order.id}")
    return f"track_{order.id}"


@queue.job("notify")
def notify(message: str) -> None:
    executions["notify"] += 1
    print(f"  notifying: {message}")


@queue.job(retries=3, backoff=jobs.constant(0.1))
def place_order(order: Order) -> str:
    executions["place_order"] += 1
    print(f"place_order({order.id}) run {executions['place_order']}")
    receipt: Receipt = jobs.call("charge-payment", order)  # checkpointed: never charged twice
    jobs.call("reserve-stock", order.items)
    tracking: str = jobs.call("ship-order", order)  # fails on the first run: the job is retried
    jobs.call("notify", f"order {order.id} shipped ({tracking}), paid by {receipt.charge_id}")
    return tracking


if __name__ == "__main__":
    job_id = queue.enqueue(place_order, Order("o-1001", 4_999, ["book", "lamp"]))
    with queue.worker():
        tracking = queue.result(job_id, timeout=30)
    runs = {name: executions[name] for name in ("place_order", "charge-payment", "ship-order")}
    job = queue.get_job(job_id)
    assert job is not None
    print(f"{job.status.value} after {job.attempt} runs, tracking number {tracking}")
    print("executions: " + ", ".join(f"{name} x{n}" for name, n in runs.items()))
