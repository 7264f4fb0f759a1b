"""Who may use ``pccd serve``: a token on any address but loopback, and no cross-site posts.

Jupyter's answer: the server prints a URL with ``?token=…``; opening it stores the token in a
cookie (``HttpOnly``, ``SameSite=Strict``) that the browser then sends with every request of
the page — its scripts, styles and API calls — so the page's code never handles the token.
Scripts and other clients send it as ``Authorization: Bearer …`` or ``X-PCCD-Token``.
Anything without it gets 401.

Cross-site requests are refused twice over: a POST whose ``Origin`` is not this server gets
403 (with or without a token), and a cross-site page cannot read or send the ``SameSite``
cookie. The API also takes only ``application/json`` bodies, which a plain HTML form cannot
send (see :func:`pccd.web.app._json_body`).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers, QueryParams

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_HEADER = "x-pccd-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine (``localhost``, 127/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def new_token() -> str:
    """A token to print at start-up: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


def cookie_name(port: int | None) -> str:
    """One cookie per port: browsers share cookies between the ports of a host, and two
    servers on one machine must not overwrite each other's token."""
    return f"pccd-token-{port}" if port else "pccd-token"


class TokenGate:
    """ASGI middleware: refuse cross-site posts; with a ``token``, refuse requests without it."""

    def __init__(self, app: ASGIApp, token: str | None = None):
        if token is not None and not token:
            raise ValueError("the token must not be empty")
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] not in SAFE_METHODS and not _same_origin(headers):
            await _refuse(send, 403, "cross-site request refused (its Origin is not this server)")
            return
        if self.token is None:
            await self.app(scope, receive, send)
            return
        server = scope.get("server") or (None, None)
        name = cookie_name(server[1])
        query = QueryParams(scope.get("query_string", b"").decode("latin-1")).get("token")
        if self._valid(_from_headers(headers, name)):
            await self.app(scope, receive, send)
        elif self._valid(query):
            await self.app(scope, receive, _set_cookie(send, name, query or ""))
        else:
            await _refuse(
                send,
                401,
                "this server needs its token: open the URL pccd serve printed (…/?token=…), "
                "or send it as Authorization: Bearer <token>",
            )

    def _valid(self, given: str | None) -> bool:
        assert self.token is not None
        return given is not None and secrets.compare_digest(given.encode(), self.token.encode())


def _from_headers(headers: Headers, cookie: str) -> str | None:
    """The token a request carries in a header or the page's cookie."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    if TOKEN_HEADER in headers:
        return headers[TOKEN_HEADER]
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == cookie:
            return value
    return None


def _same_origin(headers: Headers) -> bool:
    """A request without ``Origin`` (curl, scripts) or whose ``Origin`` names this server."""
    origin = headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()


def _set_cookie(send: Send, name: str, token: str) -> Send:
    """``send`` that adds the token's cookie to the response (the page then sends it back)."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            cookie = f"{name}={token}; Path=/; HttpOnly; SameSite=Strict"
            message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
        await send(message)

    return wrapped


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *([(b"www-authenticate", b"Bearer")] if status == 401 else []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
