"""``manage.py sdj_migrate``: create or upgrade the jobs' tables."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from .....storage.urls import masked
from ... import get_queue
from ...conf import database_url


class Command(BaseCommand):
    help = (
        "Create or upgrade the durable_jobs tables in the jobs' database (idempotent, safe "
        "to run from several processes at once)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        storage = get_queue().storage
        storage.migrate()
        self.stdout.write(
            f"durable_jobs schema at version {storage.schema_version()} in {masked(database_url())}"
        )
