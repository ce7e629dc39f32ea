"""The request path shared by both transcription endpoints: model → decode → limits → queue → result."""

from __future__ import annotations

import asyncio
import time

from fastapi import UploadFile

from app.errors import AudioTooLongError, RequestTimeoutError, UnsupportedOptionError, status_of
from app.metrics import Metrics
from app.model_manager import ModelManager
from app.settings import Settings
from app.transcription import TranscribeRequest, transcribe
from app.upload import decode_upload
from k2d.engine import DecodeOptions


async def handle(upload: UploadFile, model: str | None, language: str | None, options: DecodeOptions, vad: bool,
                 models: ModelManager, settings: Settings, metrics: Metrics) -> dict:
    """Run one transcription and record its metrics; errors propagate as typed exceptions."""
    name, served = models.get(model)
    started, status = time.monotonic(), 200
    metrics.in_flight.labels(name).inc()
    try:
        if language and served.scheduler.engine.multilingual:
            if served.scheduler.engine.tokenizer.token_to_id(f"<|{language}|>") is None:
                raise UnsupportedOptionError(f"unknown language {language!r} (use an ISO code such as zh or en)")
        elif language and language != "en":
            raise UnsupportedOptionError(f"model {name!r} is English-only; language must be en")
        audio = await asyncio.to_thread(decode_upload, await upload.read())
        if len(audio) / 16000 > settings.max_audio_s:
            raise AudioTooLongError(f"audio is {len(audio) / 16000:.0f} s; the limit is {settings.max_audio_s:.0f} s")
        request = TranscribeRequest(language, options, vad)
        try:
            return await asyncio.wait_for(transcribe(audio, served, name, request, settings.vad_min_silence_ms),
                                          settings.request_timeout_s)
        except TimeoutError as err:
            raise RequestTimeoutError(f"transcription took longer than {settings.request_timeout_s:.0f} s") from err
    except Exception as err:
        status = status_of(err)[0]
        raise
    finally:
        metrics.in_flight.labels(name).dec()
        metrics.requests.labels(name, str(status)).inc()
        metrics.request_seconds.labels(name).observe(time.monotonic() - started)
