"""The dashboard in a Django project, without Django's admin: mounted beside Django's
ASGI application. In ``asgi.py``::

    from django.core.asgi import get_asgi_application
    from durable_jobs.contrib.django.asgi import staff_member, with_dashboard

    application = with_dashboard(
        get_asgi_application(), "/jobs", allow=staff_member, auth=staff_member
    )

Needs the ``django`` extra (Starlette and Jinja2 come with it).
"""

from __future__ import annotations

from importlib import import_module

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest
from starlette.requests import Request
from starlette.routing import Mount, Router
from starlette.types import ASGIApp

from ..dashboard import Allow, guarded_dashboard
from . import get_queue

__all__ = ["staff_member", "with_dashboard"]


def with_dashboard(
    application: ASGIApp,
    path: str = "/jobs",
    *,
    allow: Allow | None = None,
    auth: Allow | None = None,
    refresh: float = 5.0,
) -> ASGIApp:
    """Django's ASGI ``application`` with the dashboard of ``get_queue()`` at ``path``.

    Requests under ``path`` go to the dashboard, every other one to Django.
    ``allow(request)`` says who may see it (others get 403) and ``auth(request)`` who may
    also act; both take a Starlette ``Request``, sync or async (``staff_member`` checks
    Django's session). Without ``allow`` whoever reaches ``path`` sees it; without
    ``auth`` it is read-only.
    """
    dashboard = guarded_dashboard(get_queue(), allow=allow, auth=auth, refresh=refresh)
    return Router(routes=[Mount(path, app=dashboard), Mount("", app=application)])


async def staff_member(request: Request) -> bool:
    """Whether the request carries the Django session of an active staff user (needs
    ``django.contrib.auth`` and ``django.contrib.sessions``): for ``allow`` and ``auth``."""
    key = request.cookies.get(settings.SESSION_COOKIE_NAME)
    if not key:
        return False
    return await sync_to_async(_staff_session)(key)


def _staff_session(key: str) -> bool:
    holder = HttpRequest()
    holder.session = import_module(settings.SESSION_ENGINE).SessionStore(key)
    user = get_user(holder)
    # A custom user model may have no is_staff: then nobody is.
    return bool(user.is_active and getattr(user, "is_staff", False))
