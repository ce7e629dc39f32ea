"""Every failure a client can cause maps to a status that says what went wrong — never a 500."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.batching import EngineError, QueueFullError, ShuttingDownError
from app.upload import AudioDecodeError, EmptyAudioError
from k2d.registry import UnknownModelError


class AudioTooLongError(ValueError):
    """Decoded audio longer than ``K2D_MAX_AUDIO_S``."""


class RequestTimeoutError(RuntimeError):
    """The transcription did not finish within ``K2D_REQUEST_TIMEOUT_S``."""


class UnsupportedOptionError(ValueError):
    """A form value that parses but that this model cannot honour (e.g. an unknown language)."""


def error_body(status: int, message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": status}}


STATUS = {
    UnknownModelError: (404, "model_not_found"),
    AudioDecodeError: (415, "unsupported_audio"),
    EmptyAudioError: (400, "empty_audio"),
    AudioTooLongError: (413, "audio_too_long"),
    UnsupportedOptionError: (422, "invalid_option"),
    QueueFullError: (429, "queue_full"),
    ShuttingDownError: (503, "shutting_down"),
    RequestTimeoutError: (503, "timeout"),
    EngineError: (500, "inference_failed"),
}


def status_of(err: BaseException) -> tuple[int, str]:
    for kind, status in STATUS.items():
        if isinstance(err, kind):
            return status
    return 500, "internal_error"


def install(app: FastAPI) -> None:
    for kind in STATUS:
        app.add_exception_handler(kind, _handler)


async def _handler(_: Request, err: Exception) -> JSONResponse:
    status, kind = status_of(err)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(error_body(status, str(err), kind), status_code=status, headers=headers)


class UploadLimit:
    """ASGI middleware: refuse a body over the limit while it streams in (413), not after.

    A declared Content-Length over the limit is refused before reading a byte; a chunked upload
    is cut off as soon as the running total passes the limit.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        state = {"received": 0, "refused": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes and not state["refused"]:
                    state["refused"] = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not state["refused"]:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["refused"]:
                raise

    async def _refuse(self, send) -> None:
        body = json.dumps(error_body(413, f"upload larger than {self.max_bytes / 1e6:.1f} MB", "upload_too_large"))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body.encode()})
