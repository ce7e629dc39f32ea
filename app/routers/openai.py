"""The OpenAI audio API's shape, so the ``openai`` client and existing tools work unchanged."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response

from app.dependencies import get_metrics, get_models, get_settings, require_api_key
from app.formats import ResponseFormat
from app.routers.transcribe import render
from app.service import handle
from k2d.engine import DecodeOptions

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
OPENAI_DEFAULT = "whisper-1"  # what OpenAI clients send by default: served by our default model


@router.post("/audio/transcriptions", summary="OpenAI-compatible transcription")
async def transcriptions(
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()] = OPENAI_DEFAULT,
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form(description="Accepted for compatibility; not used")] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
    models=Depends(get_models), settings=Depends(get_settings), metrics=Depends(get_metrics),
) -> Response:
    options = DecodeOptions(beam_size=5, temperature=temperature, word_timestamps="word" in (timestamp_granularities or []))
    name = None if model == OPENAI_DEFAULT else model
    result = await handle(file, name, language or None, options, True, models, settings, metrics)
    return render(result, response_format, verbose_keys=False)


@router.get("/models", summary="Served models (OpenAI shape)")
async def list_models(models=Depends(get_models)) -> dict:
    created = int(time.time())
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "k2d", "role": served.entry.role,
         "parameters": served.entry.parameters, "default": name == models.default}
        for name, served in models.models.items()
    ]}
