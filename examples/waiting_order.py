"""An order that waits: for its payment (a signal, with a timeout), for one child job per
item (a fan-out), and for a day before a reminder (a durable sleep, shortened here).

While it waits the order holds no worker slot; any worker resumes it by replaying its
checkpoints. Run it: python examples/waiting_order.py
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import durable_jobs as jobs

queue = jobs.Queue()  # $SDJ_DATABASE_URL, else sqlite:///jobs.db
REMINDER_AFTER = timedelta(seconds=1)  # a day in a real shop


@dataclass
class Order:
    id: str
    items: list[str]


@dataclass
class Parcel:
    order_id: str
    item: str


@queue.job()
def pack_item(parcel: Parcel) -> str:
    """One child per item: idempotent, since a child may run more than once."""
    return f"{parcel.item} packed for {parcel.order_id}"


@queue.job()
def send_reminder(order_id: str) -> None:
    print(f"  reminder sent for {order_id}")


@queue.job(retries=0)
def process_order(order: Order) -> dict[str, object]:
    jobs.set_progress({"stage": "awaiting payment"})
    try:
        payment = jobs.wait_for_signal("payment", timeout=timedelta(minutes=30))
    except jobs.SignalTimeout:
        return {"order": order.id, "status": "cancelled: not paid in time"}
    jobs.set_progress({"stage": "packing", "items": len(order.items)})
    packed = jobs.fan_out([jobs.sub(pack_item, Parcel(order.id, item)) for item in order.items])
    jobs.sleep(REMINDER_AFTER)
    jobs.spawn(send_reminder, order.id)
    return {"order": order.id, "paid": payment, "packed": [r.value for r in packed]}


if __name__ == "__main__":
    with queue.events() as events, queue.worker():
        order = queue.enqueue(process_order, Order("order-7", ["book", "lamp", "mug"]))
        for event in events:  # until the order waits for its payment (or fails)
            if event.job.id == order and isinstance(event, jobs.JobWaiting | jobs.JobFailed):
                break
        job = queue.get_job(order)
        assert job is not None
        print(f"order is {job.status.value}: {job.progress}")
        queue.signal(order, "payment", {"amount": 42, "by": "card"})
        print("result:", queue.result(order, timeout=30))
