"""Who may act, CSRF protection for the actions, and the headers every response carries.

Actions are POST-only and need three things: the ``auth`` callable says yes, the form's
token equals the browser's token cookie (double submit: another site can make the
browser send the cookie but cannot read it to put it in the form), and, when the
browser names the page's origin, it is this host (which also stops a sibling subdomain
that planted its own token cookie).
"""

from __future__ import annotations

import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CSRF_COOKIE",
    "MAX_FORM_BYTES",
    "Auth",
    "FormError",
    "SecurityHeaders",
    "allowed",
    "csrf_token",
    "read_form",
    "set_csrf_cookie",
]

Auth = Callable[[Request], bool | Awaitable[bool]]

CSRF_COOKIE = "sdj_csrf"
MAX_FORM_BYTES = 1 << 20

# Scripts and styles only from the dashboard's own files: even if job data ever slipped
# past escaping, the browser would not run it. No framing: actions cannot be clickjacked.
_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """ASGI middleware adding the dashboard's security headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def allowed(auth: Auth | None, request: Request) -> bool:
    """Whether ``request`` may act: never without ``auth`` (read-only mode)."""
    if auth is None:
        return False
    verdict = auth(request)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return verdict is True


def csrf_token(request: Request) -> tuple[str, bool]:
    """The browser's CSRF token and whether it is new (and so must be set as a cookie)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) >= 32:
        return token, False
    return secrets.token_urlsafe(32), True


def set_csrf_cookie(response: Response, request: Request, token: str) -> None:
    """Give the browser its token; scoped to the dashboard's path, never sent cross-site."""
    response.set_cookie(
        CSRF_COOKIE,
        token,
        path=request.scope.get("root_path") or "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


class FormError(Exception):
    """A POST that must be refused, with the HTTP status to refuse it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_form(request: Request) -> dict[str, str]:
    """The URL-encoded form of a POST whose origin and CSRF token check out.

    Raises ``FormError`` otherwise. Parsed here rather than with ``request.form()``,
    which needs the python-multipart package for a format these forms never use.
    """
    if not _same_origin(request):
        raise FormError(403, "cross-origin request refused")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise FormError(415, "expected an application/x-www-form-urlencoded form")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError(413, f"form larger than {MAX_FORM_BYTES} bytes")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    form = {name: values[-1] for name, values in fields.items()}
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get("csrf", "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise FormError(403, "missing or wrong CSRF token: reload the page and try again")
    return form


def _same_origin(request: Request) -> bool:
    # Browsers send Origin with every POST; Referer is the fallback of older ones. Only
    # host and port are compared: a TLS-terminating proxy changes the scheme it forwards.
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True  # not a browser's cross-site form: the token still has to match
    host = request.headers.get("host", "")
    return bool(host) and urlsplit(source).netloc.lower() == host.lower()
