"""OpenAI's error envelope for the jobs routers: an exception type and a route class that renders it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from ..serve.limits import BodyTooLarge


def envelope(message: str, *, type: str = "invalid_request_error", param: str | None = None,
             code: str | None = None) -> dict:
    """The body OpenAI returns for every error (all four keys present)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class APIError(Exception):
    """An HTTP error rendered as OpenAI's error envelope."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(envelope(self.message, type=self.type, param=self.param, code=self.code),
                            status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    # 400 is never retried by the SDK; say so explicitly for proxies and other clients
    return APIError(400, message, param=param, code=code, headers={"x-should-retry": "false"})


def not_found(message: str, param: str | None = None) -> APIError:
    return APIError(404, message, param=param, code=None)


def conflict(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(409, message, param=param, code=code, headers={"x-should-retry": "false"})


def _validation_error(err: RequestValidationError) -> APIError:
    first: dict[str, Any] = (err.errors() or [{}])[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body", "header", "form")]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request")
    return bad_request(f"Invalid value for '{param}': {msg}" if param else msg, param=param)


class ErrorRoute(APIRoute):
    """Route class: APIError, an over-large body (413) and FastAPI's request validation errors leave
    the route as OpenAI-shaped JSON (400 instead of FastAPI's 422), whatever app mounts the router.
    Other exceptions (e.g. an authentication dependency's own error) go on to the app's handlers."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except (APIError, BodyTooLarge) as e:
                return e.response()
            except RequestValidationError as e:
                return _validation_error(e).response()
            except RecursionError:             # deeply nested JSON reached recursive code
                return bad_request("The request holds JSON nested too deeply").response()
        return route
