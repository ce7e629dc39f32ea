"""FastAPI dependencies: settings, the model manager, metrics, and the optional API key."""

from __future__ import annotations

import secrets

from fastapi import Header, HTTPException, Request

from app.metrics import Metrics
from app.model_manager import ModelManager
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_models(request: Request) -> ModelManager:
    return request.app.state.models


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def require_api_key(request: Request, authorization: str | None = Header(None)) -> None:
    expected = request.app.state.settings.api_key
    if not expected:
        return
    token = (authorization or "").removeprefix("Bearer ").strip()
    if not secrets.compare_digest(token, expected):
        raise HTTPException(401, "missing or wrong API key (Authorization: Bearer <key>)",
                            headers={"WWW-Authenticate": "Bearer"})
