"""``python -m durable_jobs.cli``: the ``sdj`` command (used to start worker processes)."""

from . import main

main()
