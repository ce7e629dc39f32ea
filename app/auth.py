"""The API key, on every route: ASGI middleware in front of the whole application.

With ``K2D_API_KEY`` set, every HTTP request needs ``Authorization: Bearer <key>`` — the API, the
metrics, the OpenAPI document and its pages (``/docs``, ``/redoc``, ``/openapi.json``), and any path
that does not exist (401, not a 404 that would map the routes) — except the paths the application
names public: the probes ``/healthz`` and ``/readyz`` always, ``/metrics`` when
``K2D_METRICS_PUBLIC=true``, the documentation pages when ``K2D_DOCS_PUBLIC=true``. A middleware, not a
dependency, so that a route added later, or one FastAPI adds itself (the documentation pages), cannot be left
open by forgetting it.

A WebSocket without the key is accepted and closed at once with code 1008 (policy violation): a
refusal before the handshake completes reaches the client only as a bare HTTP 403, without the reason.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from app.errors import send_error

POLICY_VIOLATION = 1008  # RFC 6455: the message (here: the handshake) violates the server's policy
TRY_AGAIN_LATER = 1013  # RFC 6455 (IANA registry): the server is overloaded, try again later
AUTH_MESSAGE = "missing or wrong API key (Authorization: Bearer <key>)"
PROBES = frozenset({"/healthz", "/readyz"})
DOCS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})  # FastAPI's documentation pages


def key_matches(authorization: str | None, expected: str | None) -> bool:
    """True when no key is configured, or the header is ``Bearer <the key>`` (compared in constant time).

    Header values arrive as latin-1 text, so the comparison runs on their original bytes (a str with
    non-ASCII characters would make ``compare_digest`` raise)."""
    if not expected:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    presented = token.strip().encode("latin-1", errors="replace")
    return scheme.lower() == "bearer" and secrets.compare_digest(presented, expected.encode("utf-8"))


def header(scope, name: bytes) -> str | None:
    """One request header as latin-1 text; None when absent (the last one when sent twice)."""
    values = [value for key, value in scope.get("headers", []) if key.lower() == name]
    return values[-1].decode("latin-1") if values else None


async def close_websocket(receive, send, code: int, reason: str) -> None:
    """Complete the handshake, then close with ``code``: the client gets the code and the reason."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code, "reason": reason[:120]})  # a close reason fits in 123 bytes


class ApiKeyGuard:
    """ASGI middleware: 401 (HTTP) or close code 1008 (WebSocket) without the key, except ``public`` paths."""

    def __init__(self, app, key: str | None, public: Callable[[str], bool]):
        self.app, self.key, self.public = app, key, public

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and self.key and not self.public(scope["path"]) \
                and not key_matches(header(scope, b"authorization"), self.key):
            if scope["type"] == "websocket":
                return await close_websocket(receive, send, POLICY_VIOLATION, "missing or wrong API key")
            return await send_error(send, 401, AUTH_MESSAGE, "unauthorized", {"WWW-Authenticate": "Bearer"})
        await self.app(scope, receive, send)
