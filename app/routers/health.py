"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.dependencies import get_metrics, get_models

router = APIRouter()


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Models loaded, workers running, not draining",
            responses={503: {"description": "Not ready: loading, a worker died, or draining for shutdown"}})
async def readyz(request: Request, models=Depends(get_models)) -> JSONResponse:
    draining = request.app.state.lifecycle.draining
    ready = models.ready() and not draining
    body = {"ready": ready, "draining": draining, "models": {n: s.scheduler.alive for n, s in models.models.items()}}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus text format", response_class=PlainTextResponse)
async def metrics(registry=Depends(get_metrics)) -> Response:
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
