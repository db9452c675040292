"""Django's ASGI application with the jobs' dashboard at /jobs, for staff only."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_application = get_asgi_application()  # sets Django up before the imports below

from durable_jobs.contrib.django.asgi import staff_member, with_dashboard  # noqa: E402

application = with_dashboard(django_application, "/jobs", allow=staff_member, auth=staff_member)
