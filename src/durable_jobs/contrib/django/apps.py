"""The Django app: ``"durable_jobs.contrib.django"`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class DurableJobsConfig(AppConfig):
    """Imports each installed app's ``jobs`` module, where its handlers are registered."""

    name = "durable_jobs.contrib.django"
    label = "durable_jobs"
    verbose_name = "Durable jobs"

    def ready(self) -> None:
        autodiscover_modules("jobs")
