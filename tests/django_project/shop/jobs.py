"""The shop's handlers: imported at start-up by durable_jobs' app in every process."""

from durable_jobs.contrib.django import get_queue

from .models import Order

queue = get_queue()


@queue.job(retries=2)
def ship_order(order_id: int) -> str:
    """Runs in ``manage.py sdj_worker``, with the ORM as anywhere in Django."""
    order = Order.objects.get(pk=order_id)
    order.status = "shipped"
    order.save()
    return f"shipped {order.quantity} x {order.item}"
