"""The dashboard behind the application's own check of who may see it.

``create_app``'s ``auth`` decides who may act; viewing is open to whoever reaches the
app. ``guarded_dashboard`` adds ``allow(request)``, asked on every request before the
dashboard sees it, so that a framework integration can mount it behind the
application's login.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..dashboard import create_app
from ..queue import Queue

__all__ = ["Allow", "guarded_dashboard"]

#: ``allow(request) -> bool`` or an async one; it may also raise Starlette's (or
#: FastAPI's) ``HTTPException`` to answer otherwise, e.g. 401 with ``WWW-Authenticate``.
Allow = Callable[[Request], bool | Awaitable[bool]]


def guarded_dashboard(
    queue: Queue,
    *,
    allow: Allow | None = None,
    auth: Allow | None = None,
    refresh: float = 5.0,
) -> ASGIApp:
    """The dashboard of ``queue`` as an ASGI app to mount under a path.

    ``allow(request)`` decides who may see it (others get 403); without it, whoever
    reaches the mount may. ``auth(request)`` decides who may also act (retry, cancel,
    enqueue...); without it the dashboard is read-only. Both take a Starlette
    ``Request`` and may be sync or async.
    """
    app = create_app(queue, auth=auth, refresh=refresh)
    return app if allow is None else _Guard(app, allow)


class _Guard:
    def __init__(self, app: ASGIApp, allow: Allow) -> None:
        self.app = app
        self.allow = allow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: nothing to guard
            await self.app(scope, receive, send)
            return
        try:
            verdict = self.allow(Request(scope, receive))
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except HTTPException as exc:
            refused = PlainTextResponse(exc.detail, exc.status_code, headers=exc.headers)
            await refused(scope, receive, send)
            return
        if verdict is not True:
            await PlainTextResponse("Forbidden", 403)(scope, receive, send)
            return
        await self.app(scope, receive, send)
