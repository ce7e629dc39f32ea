"""FastAPI dependencies: the model manager, metrics, and the optional API key."""

from __future__ import annotations

from fastapi import Header, Request

from app.auth import AUTH_MESSAGE, key_matches
from app.errors import AuthError
from app.metrics import Metrics
from app.model_manager import ModelManager


def get_models(request: Request) -> ModelManager:
    return request.app.state.models


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def require_api_key(request: Request, authorization: str | None = Header(None, description="Bearer <key>")) -> None:
    """``Authorization: Bearer <key>`` when K2D_API_KEY is set; anything else is a 401, never a 500. The
    middleware (:class:`app.auth.ApiKeyGuard`) already refuses every route; this dependency states the
    header and the 401 in the OpenAPI document of the routes that take it."""
    if not key_matches(authorization, request.app.state.settings.api_key):
        raise AuthError(AUTH_MESSAGE)


__all__ = ["get_metrics", "get_models", "key_matches", "require_api_key"]
