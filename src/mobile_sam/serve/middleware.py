"""ASGI middleware of the app: security headers on every response, a size limit on JSON bodies."""
from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError

__all__ = ["JsonBodyLimit", "SecurityHeaders"]

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
