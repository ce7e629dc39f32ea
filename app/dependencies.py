"""FastAPI dependencies: settings, the model manager, metrics, and the optional API key."""

from __future__ import annotations

import secrets

from fastapi import Header, Request

from app.errors import AuthError
from app.metrics import Metrics
from app.model_manager import ModelManager
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_models(request: Request) -> ModelManager:
    return request.app.state.models


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def require_api_key(request: Request, authorization: str | None = Header(None, description="Bearer <key>")) -> None:
    """``Authorization: Bearer <key>`` when K2D_API_KEY is set; anything else is a 401, never a 500.

    Header values arrive as latin-1 text, so the comparison runs on their original bytes (a str with
    non-ASCII characters would make ``compare_digest`` raise)."""
    if not key_matches(authorization, request.app.state.settings.api_key):
        raise AuthError("missing or wrong API key (Authorization: Bearer <key>)")


def key_matches(authorization: str | None, expected: str | None) -> bool:
    """True when no key is configured, or the header is ``Bearer <the key>`` (compared in constant time)."""
    if not expected:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    presented = token.strip().encode("latin-1", errors="replace")
    return scheme.lower() == "bearer" and secrets.compare_digest(presented, expected.encode("utf-8"))
