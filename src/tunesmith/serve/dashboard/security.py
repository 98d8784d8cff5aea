"""Dashboard sign-in and CSRF: the API's keys in an HttpOnly cookie, a CSRF token tied to the session cookie.

* With API keys configured, every dashboard route but the login page and the static files needs the
  ``ts_key`` cookie holding one of the keys (compared in constant time); pages redirect to the login
  page, everything else answers 401.
* Every POST needs a CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``) equal to the
  HMAC of the ``ts_session`` cookie under a secret made when the app starts: a page from another site
  can neither read the token nor set the cookie (SameSite=Strict, HttpOnly).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from fastapi import Request

KEY_COOKIE = "ts_key"
SESSION_COOKIE = "ts_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
LOGIN_PATH = "/ui/login"


class LoginRequired(Exception):
    """A page asked for without a valid key: answered with a redirect to the login page."""

    def __init__(self, next_url: str):
        self.next_url = next_url


class Refused(Exception):
    """An action or data request without a valid key or CSRF token: answered with ``status`` and a line."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


class Guard:
    """Checks keys and CSRF tokens for one app (the secret lives as long as the app)."""

    def __init__(self, keys: Sequence[str]):
        self.keys = [k.encode() for k in keys]
        self.secret = secrets.token_bytes(32)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def key_ok(self, key: str | None) -> bool:
        if not self.keys:
            return True
        if not key:
            return False
        given = key.encode()
        return any(secrets.compare_digest(given, k) for k in self.keys)

    def signed_in(self, request: Request) -> bool:
        return self.key_ok(request.cookies.get(KEY_COOKIE))

    def api_key(self, request: Request) -> str | None:
        """The signed-in key, for calling the API in-process on the user's behalf."""
        key = request.cookies.get(KEY_COOKIE)
        return key if self.keys and self.key_ok(key) else None

    def page(self, request: Request) -> None:
        """For HTML pages: LoginRequired unless signed in."""
        if not self.signed_in(request):
            nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(nxt)

    def data(self, request: Request) -> None:
        """For data routes (streams, files, fragments): 401 unless signed in."""
        if not self.signed_in(request):
            raise Refused(401, "sign in to the dashboard first (/ui/login)")

    # -- CSRF ------------------------------------------------------------------------------------------

    def token_for(self, session: str) -> str:
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, request: Request, given: str | None) -> bool:
        session = request.cookies.get(SESSION_COOKIE)
        if not session or not given:
            return False
        return hmac.compare_digest(self.token_for(session), given)

    async def action(self, request: Request) -> None:
        """For POSTs: 401 unless signed in, 403 unless the CSRF token matches the session cookie."""
        self.data(request)
        await self.check_csrf(request)

    async def check_csrf(self, request: Request) -> None:
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            given = value if isinstance(value, str) else None
        if not self.csrf_ok(request, given):
            raise Refused(403, "missing or wrong CSRF token: reload the page and try again")


def new_session() -> str:
    return secrets.token_urlsafe(32)


def set_cookie(response, request: Request, name: str, value: str) -> None:
    response.set_cookie(name, value, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
