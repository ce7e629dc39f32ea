"""Every failure a client can cause maps to a status that says what went wrong — never a 500.

All errors share one body, ``{"error": {"message", "type", "code"}}`` (the OpenAI shape), whether
raised by the service, by FastAPI (404 for an unknown path, 405) or by a middleware (413, 503).
The same table feeds the OpenAPI document, so it lists every status a route can answer.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.batching import EngineError, QueueFullError, ShuttingDownError
from app.upload import AudioDecodeError, AudioTooLongError, DecodeCancelledError, EmptyAudioError, InvalidSamplesError
from k2d.registry import UnknownModelError


class RequestTimeoutError(RuntimeError):
    """The transcription did not finish within ``K2D_REQUEST_TIMEOUT_S``."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after  # when admission expects a request like it to fit again


class UnsupportedOptionError(ValueError):
    """A form value that parses but that this model cannot honour (e.g. an unknown language)."""


class AuthError(PermissionError):
    """No, or the wrong, ``Authorization: Bearer <key>``."""


class OverloadedError(RuntimeError):
    """Admission control: the model's queue cannot take this request within its deadline."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


def error_body(status: int, message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": status}}


STATUS: dict[type[BaseException], tuple[int, str]] = {
    UnknownModelError: (404, "model_not_found"),
    AuthError: (401, "unauthorized"),
    AudioDecodeError: (415, "unsupported_audio"),
    EmptyAudioError: (400, "empty_audio"),
    InvalidSamplesError: (400, "invalid_audio"),
    AudioTooLongError: (413, "audio_too_long"),
    UnsupportedOptionError: (422, "invalid_option"),
    OverloadedError: (429, "overloaded"),
    QueueFullError: (429, "queue_full"),
    ShuttingDownError: (503, "shutting_down"),
    DecodeCancelledError: (503, "cancelled"),  # only an abandoned or timed-out request's decode stops
    RequestTimeoutError: (503, "timeout"),
    EngineError: (500, "inference_failed"),
}


def status_of(err: BaseException) -> tuple[int, str]:
    for kind, status in STATUS.items():
        if isinstance(err, kind):
            return status
    return 500, "internal_error"


def headers_for(err: BaseException, status: int) -> dict[str, str] | None:
    """Retry-After on 429/503 (the estimate when admission control made one); the auth challenge on 401."""
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    if status in (429, 503):
        return {"Retry-After": str(getattr(err, "retry_after", 1))}
    return None


def install(app: FastAPI) -> None:
    for kind in STATUS:
        app.add_exception_handler(kind, _handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception)


async def _handler(_: Request, err: Exception) -> JSONResponse:
    status, kind = status_of(err)
    return JSONResponse(error_body(status, str(err), kind), status_code=status, headers=headers_for(err, status))


async def _http_exception(_: Request, err: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own errors (unknown path, wrong method) in the common shape instead of ``{"detail"}``."""
    kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return JSONResponse(error_body(err.status_code, str(err.detail), kind), status_code=err.status_code,
                        headers=getattr(err, "headers", None))


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    """The body of every non-2xx answer."""

    error: ErrorDetail


DESCRIPTIONS = {
    400: "Empty upload, no audio samples, or NaN/Inf samples",
    401: "Missing or wrong API key (`Authorization: Bearer <key>`)",
    404: "Unknown model",
    408: "The upload did not arrive within the request timeout",
    413: "Upload larger than K2D_MAX_UPLOAD_MB, or audio longer than K2D_MAX_AUDIO_S",
    415: "Not an audio file FFmpeg can decode",
    422: "Invalid form field, unknown language, or a task this model cannot do",
    429: "The model's queue cannot take this request within its deadline (see Retry-After)",
    500: "The engine failed on this request's batch",
    503: "Draining for shutdown, or the request timed out (see Retry-After)",
}


def responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` for a route: each status it may answer, all with the common error body."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


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
        await send_error(send, 413, f"upload larger than {self.max_bytes / 1e6:.1f} MB", "upload_too_large",
                         {"Connection": "close"})


async def send_error(send, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
    """A complete JSON error answer (the common error shape, Content-Length framed) from ASGI middleware."""
    body = json.dumps(error_body(status, message, kind)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
