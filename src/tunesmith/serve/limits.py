"""Request-body size limits, enforced while the body is read (a declared Content-Length and chunked
bodies alike) and answered as HTTP 413 in OpenAI's error envelope."""
from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_LIMIT_KEY = "tunesmith.max_body_bytes"     # scope key: the limit of the request being served


class BodyTooLarge(HTTPException):
    """The request body exceeds its limit (raised from ``receive``; rendered as a 413 envelope)."""

    def __init__(self, limit: int, seen: int, param: str | None = None):
        self.limit, self.seen = limit, seen
        message = f"The request body is too large ({seen:,} bytes or more); the limit is {limit:,} bytes."
        super().__init__(413, detail={"error": {"message": message, "type": "invalid_request_error",
                                                "param": param, "code": "request_too_large"}},
                         headers={"x-should-retry": "false"})

    def response(self) -> JSONResponse:
        return JSONResponse(self.detail, status_code=self.status_code, headers=self.headers)


def _declared(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def limit_receive(receive: Receive, scope: Scope, limit_of: Callable[[], int]) -> Receive:
    """``receive`` that raises BodyTooLarge once the declared or the received body exceeds
    ``limit_of()`` (read at every call, so a route may change the limit before reading)."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        limit = limit_of()
        declared = _declared(scope)
        if declared is not None and declared > limit:
            raise BodyTooLarge(limit, declared)
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit, received)
        return message
    return limited


class BodyLimitMiddleware:
    """Pure ASGI middleware: every HTTP request's body may hold at most ``max_bytes`` bytes, unless the
    route serving it set its own limit first (``limited_request``, e.g. file uploads). The error
    reaches the app's exception handlers as an HTTPException (413); one escaping before a response
    started is answered here."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[BODY_LIMIT_KEY] = self.max_bytes
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limit_receive(receive, scope, lambda: scope[BODY_LIMIT_KEY]), tracked)
        except BodyTooLarge as e:
            if started:
                raise
            await e.response()(scope, receive, send)


def limited_request(request: Request, max_bytes: int) -> Request:
    """``request`` whose body may hold ``max_bytes`` (a route's own limit, checked while reading even
    without the middleware); an app-wide BodyLimitMiddleware defers to it."""
    request.scope[BODY_LIMIT_KEY] = max_bytes
    return Request(request.scope, limit_receive(request.receive, request.scope, lambda: max_bytes))
