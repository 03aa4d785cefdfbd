"""ASGI middleware of the app: security headers on every response, a size limit on JSON bodies,
an optional bearer token on the API."""
from __future__ import annotations

import hmac

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response

__all__ = ["BearerToken", "JsonBodyLimit", "SecurityHeaders"]

_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class SecurityHeaders:
    """``nosniff`` on every response; on HTML pages a Content-Security-Policy allowing nothing
    but this server (no CDN, no inline script)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", _CSP)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class JsonBodyLimit:
    """Request bodies other than the ``exempt`` (method, path) pairs (image uploads, which
    enforce their own limit) may not exceed ``limit`` bytes; counted as they arrive, so a huge
    body is never held."""

    def __init__(self, app: ASGIApp, limit: int, exempt: frozenset[tuple[str, str]]) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.exempt:
            await self.app(scope, receive, send)
            return
        total = 0

        async def bounded_receive() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.limit:
                    raise ApiError(413, "body", f"body: larger than the limit of {self.limit} "
                                                "bytes for a JSON request")
            return message

        await self.app(scope, bounded_receive, send)


class BearerToken:
    """Requests under ``prefix`` (the API) must carry ``Authorization: Bearer <token>``; others
    get 401 with ``WWW-Authenticate: Bearer``. The page, its files, /docs and /health stay
    open: the page asks for the token and sends it with its API calls. CORS preflights
    (OPTIONS) carry no credentials and are answered before this (by the CORS middleware)."""

    def __init__(self, app: ASGIApp, token: str, prefix: str = "/v1/") -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("authorization", "").encode()
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        reason = "missing" if not given else "wrong"
        response = error_response(
            401, "Authorization", f"Authorization: {reason} token; send the header "
                                  "'Authorization: Bearer <token>' (the server's --token)",
            headers={"WWW-Authenticate": 'Bearer realm="mobile-sam"'})
        await response(scope, receive, send)
