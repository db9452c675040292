"""``manage.py shop_scenario NAME``: what the tests do inside the Django project; prints
JSON for the test to check against the database."""

import json
from argparse import ArgumentParser
from typing import Any

from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.core.management.base import BaseCommand
from django.db import transaction

import durable_jobs as jobs
from durable_jobs.contrib.django import enqueue, enqueue_many, get_queue
from shop.jobs import ship_order
from shop.models import Order


class Abort(Exception):
    pass


def enqueued(stream: jobs.EventStream) -> list[str]:
    """The ids of the JobEnqueued events buffered in ``stream`` so far."""
    ids = []
    while len(stream) and (event := stream.get(timeout=0)) is not None:
        if isinstance(event, jobs.JobEnqueued):
            ids.append(event.job.id)
    return ids


def transactions() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with get_queue().events() as stream:
        with transaction.atomic():
            order = Order.objects.create(item="book", quantity=1)
            out["committed"] = enqueue(ship_order, order.id)
            out["seen_before_commit"] = enqueued(stream)
        out["seen_after_commit"] = enqueued(stream)

        try:
            with transaction.atomic():
                order = Order.objects.create(item="book", quantity=1)
                out["rolled_back_order"] = order.id
                out["rolled_back"] = enqueue(ship_order, order.id)
                out["rolled_back_many"] = enqueue_many([("report", 1), ("report", 2, {})])
                raise Abort
        except Abort:
            pass

        with transaction.atomic():
            out["outer"] = enqueue("report", 3)
            try:
                with transaction.atomic():  # a savepoint
                    out["in_savepoint"] = enqueue("report", 4)
                    raise Abort
            except Abort:
                pass

        out["autocommit"] = enqueue("report", 5)  # outside atomic(): committed at once
        with transaction.atomic():
            out["unique"] = [
                enqueue("report", 6, unique_key="daily"),
                enqueue("report", 7, unique_key="daily"),
            ]
        out["events"] = enqueued(stream)
    return out


def order() -> dict[str, Any]:
    with transaction.atomic():
        placed = Order.objects.create(item="lamp", quantity=2)
        job_id = enqueue(ship_order, placed.id)
    return {"order": placed.id, "job": job_id}


def sessions() -> dict[str, Any]:
    keys = {}
    for name, staff in (("staff", True), ("customer", False)):
        user = User.objects.create_user(name, password="x", is_staff=staff)
        session = SessionStore()
        session["_auth_user_id"] = str(user.pk)
        session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
        session.create()
        keys[name] = session.session_key
    return keys


SCENARIOS = {"transactions": transactions, "order": order, "sessions": sessions}


class Command(BaseCommand):
    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("scenario", choices=sorted(SCENARIOS))

    def handle(self, *args: Any, scenario: str, **options: Any) -> None:
        self.stdout.write(json.dumps(SCENARIOS[scenario]()))
