"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.dependencies import get_metrics, get_models

router = APIRouter()


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Models loaded and workers running")
async def readyz(models=Depends(get_models)) -> JSONResponse:
    ready = models.ready()
    body = {"ready": ready, "models": {n: s.scheduler.alive for n, s in models.models.items()}}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus text format")
async def metrics(registry=Depends(get_metrics)) -> Response:
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
