"""A checkpointed order workflow: charge, reserve, ship, notify.

Run it twice to see replay at work: the first run's worker "crashes" after charging
(the workflow raises on its first attempt), and the retry resumes without charging again.

    python examples/order_workflow.py
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import durable_jobs as jobs

queue = jobs.Queue("sqlite:///orders.db")


@dataclass
class Order:
    id: str
    cents: int
    items: list[str]


@dataclass
class Receipt:
    charge_id: str
    cents: int


@queue.job()
def charge(order: Order) -> Receipt:
    print(f"  charging {order.cents} cents for {order.id}")
    return Receipt(charge_id=f"ch_{order.id}", cents=order.cents)


@queue.job()
def reserve(items: list[str]) -> list[str]:
    print(f"  reserving {items}")
    return [f"res_{item}" for item in items]


@queue.job()
def ship(order: Order) -> str:
    print(f"  shipping {order.id}")
    return f"track_{order.id}"


@queue.job()
def notify(message: str) -> None:
    print(f"  notifying: {message}")


@queue.job(retries=3, backoff=jobs.constant(0.1))
def place_order(order: Order) -> str:
    attempt = jobs.current_job().attempt
    print(f"run {attempt} of place_order({order.id})")
    receipt: Receipt = jobs.call("charge", order)  # checkpointed: never charged twice
    jobs.call("reserve", order.items)
    if attempt == 1:
        raise ConnectionError("the shipping service is down")  # retried; charge is not
    tracking: str = jobs.call("ship", order)
    jobs.call("notify", f"order {order.id} shipped ({tracking}), paid by {receipt.charge_id}")
    return tracking


if __name__ == "__main__":
    job_id = queue.enqueue(place_order, Order("o-1001", 4_999, ["book", "lamp"]))
    with queue.worker():
        while queue.get_job(job_id).status not in ("completed", "failed"):
            time.sleep(0.01)
    job = queue.get_job(job_id)
    print(f"{job.status} after {job.attempt} runs, result {job.result!r}")
