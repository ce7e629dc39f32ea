"""The FastAPI application: settings → model manager → schedulers → routers.

``create_app(settings)`` builds a fresh app (tests start several with different settings);
``k2d serve`` runs it under uvicorn, whose SIGTERM handling stops accepting connections and lets
in-flight requests finish before the lifespan's shutdown drains the batch queues.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app import errors
from app.metrics import Metrics
from app.model_manager import ModelManager
from app.routers import health, openai, transcribe
from app.settings import Settings

log = logging.getLogger("k2d")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics(settings.rtfx_window_s)
    models = ModelManager(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(models.load)
        models.start()
        log.info("serving %s (default %s)", ", ".join(models.models), models.default)
        yield
        await models.drain(settings.request_timeout_s)

    app = FastAPI(title="k2d", version="0.1.0", lifespan=lifespan,
                  description="Whisper teacher and K²D student, batched across concurrent requests.")
    app.state.settings, app.state.metrics, app.state.models = settings, metrics, models
    errors.install(app)

    @app.exception_handler(RequestValidationError)
    async def invalid_form(_, err: RequestValidationError) -> JSONResponse:
        message = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in err.errors())
        return JSONResponse(errors.error_body(422, message, "invalid_request"), status_code=422)

    app.include_router(health.router)
    app.include_router(transcribe.router)
    app.include_router(openai.router)
    app.add_middleware(errors.UploadLimit, max_bytes=int(settings.max_upload_mb * 1e6))
    return app


def serve(settings: Settings | None = None) -> None:
    import uvicorn

    settings = settings or Settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, timeout_graceful_shutdown=30,
                log_level="info")
