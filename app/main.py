"""The FastAPI application: settings → model manager → schedulers → routers.

``create_app(settings)`` builds a fresh app (tests start several with different settings);
``k2d serve`` runs it under :class:`~app.lifecycle.DrainingServer`: SIGTERM makes /readyz and new
requests answer 503 while in-flight requests finish (``K2D_SHUTDOWN_GRACE_S``), then the lifespan's
shutdown drains the batch queues and the process exits 0.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app import auth, errors
from app.admission import Admission, EarlyRefusal
from app.lifecycle import DrainingServer, Lifecycle, RequestGuard
from app.metrics import Metrics
from app.model_manager import ModelManager
from app.routers import health, openai, realtime, transcribe, ui
from app.settings import Settings

log = logging.getLogger("k2d")
SHUTDOWN_BACKSTOP_S = 10  # uvicorn's own grace, after ours: only idle connections are left by then


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics(settings.rtfx_window_s)
    models = ModelManager(settings, metrics)

    admission = Admission(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(models.load)
        models.start()
        log.info("serving %s (default %s)", ", ".join(models.models), models.default)
        yield
        await models.drain(settings.request_timeout_s)
        admission.close()

    app = FastAPI(title="k2d", version="0.1.0", lifespan=lifespan,
                  description="Whisper teacher and K²D student, batched across concurrent requests.")
    app.state.settings, app.state.metrics, app.state.models = settings, metrics, models
    app.state.lifecycle, app.state.admission = Lifecycle(), admission
    app.state.streams = 0  # open WebSocket transcription streams (K2D_MAX_STREAMS)
    errors.install(app)
    app.add_exception_handler(RequestValidationError, _invalid_form)
    app.include_router(health.router)
    app.include_router(transcribe.router)
    app.include_router(openai.router)
    app.include_router(realtime.router)
    if settings.ui:
        app.include_router(ui.router)  # / and /ui: the race page (ui.PUBLIC_PATHS load without the API key)
    app.add_middleware(EarlyRefusal, admission=admission, models=models, settings=settings,
                       paths=frozenset({"/transcribe", "/v1/audio/transcriptions"}))
    app.add_middleware(errors.UploadLimit, max_bytes=int(settings.max_upload_mb * 1e6))
    app.add_middleware(auth.ApiKeyGuard, key=settings.api_key, public=_public_paths(settings))
    app.add_middleware(RequestGuard, lifecycle=app.state.lifecycle, metrics=metrics, timeout_s=settings.request_timeout_s)
    return app


def _public_paths(settings: Settings):
    """What answers without the API key: the probes, /metrics and the API documentation if opted out, and the
    race page's static files (its asset route serves only the page's own files; everything the page calls needs
    the key)."""
    public = auth.PROBES | ({"/metrics"} if settings.metrics_public else frozenset()) | \
        (auth.DOCS if settings.docs_public else frozenset())
    return lambda path: path in public or (settings.ui and (ui.is_public(path) or path.startswith(ui.PUBLIC_PREFIX)))


async def _invalid_form(_, err: RequestValidationError) -> JSONResponse:
    message = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in err.errors())
    return JSONResponse(errors.error_body(422, message, "invalid_request"), status_code=422)


def serve(settings: Settings | None = None) -> None:
    """Run until SIGTERM/SIGINT, drain, exit 0 (1 if the grace period ended with requests still running)."""
    import uvicorn

    settings = settings or Settings()
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", log_config=_log_config(),
                            timeout_graceful_shutdown=SHUTDOWN_BACKSTOP_S)
    DrainingServer(config, app.state.lifecycle, settings.drain_grace_s).run()
    if not app.state.lifecycle.clean:
        sys.exit(1)


def _log_config() -> dict:
    """uvicorn's logging, with k2d's own messages (models served, drain progress) beside its lines."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["k2d"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
