"""``manage.py sdj_worker``: run a worker of the project's queue until SIGINT or SIGTERM."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from .....cli.errors import CLIError
from .....cli.worker_cmd import parse_queues
from ... import get_queue


class Command(BaseCommand):
    help = (
        "Run the jobs of the handlers registered in the installed apps' jobs modules until "
        "SIGINT or SIGTERM, then let running jobs finish."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--queues",
            help="Queues and concurrency: default=10,critical=5 (a bare name means 10); "
            "by default every queue the handlers name, 10 each.",
        )
        parser.add_argument(
            "--scheduler", action="store_true", help="Also fire the queue's schedules."
        )
        parser.add_argument(
            "--lock-timeout",
            type=float,
            default=30.0,
            help="Seconds without heartbeat before a running job is taken back (default 30).",
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=float,
            default=30.0,
            help="On SIGINT/SIGTERM, seconds to let running jobs finish (default 30).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            queues = parse_queues(options["queues"])
            worker = get_queue().worker(
                queues,
                scheduler=options["scheduler"],
                lock_timeout=options["lock_timeout"],
                shutdown_timeout=options["shutdown_timeout"],
            )
        except (CLIError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        worker.run()
