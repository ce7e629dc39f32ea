"""The OpenAI audio API's shape, so the ``openai`` client and existing tools work unchanged."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response

from app import service
from app.dependencies import get_models, require_api_key
from app.errors import responses
from app.formats import ResponseFormat
from app.routers.transcribe import MAX_PROMPT_CHARS, PROMPT_HELP, STREAM_HELP, render, transcription_responses
from app.transcription import TranscribeRequest
from k2d.engine import DecodeOptions

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
OPENAI_DEFAULT = "whisper-1"  # what OpenAI clients send by default: served by our default model


@router.post("/audio/transcriptions", summary="OpenAI-compatible transcription", response_model=None,
             responses=transcription_responses())
async def transcriptions(
    http: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form(description="`whisper-1` (the default model), a served model, `student` or `teacher`")]
        = OPENAI_DEFAULT,
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form(max_length=MAX_PROMPT_CHARS, description=PROMPT_HELP)] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.0,
    timestamp_granularities: Annotated[list[Literal["word", "segment"]] | None,
                                       Form(alias="timestamp_granularities[]")] = None,
    stream: Annotated[bool, Form(description=STREAM_HELP)] = False,
) -> Response:
    words = "word" in (timestamp_granularities or [])
    options = DecodeOptions(beam_size=5, temperature=temperature, word_timestamps=words, prompt=prompt or None)
    name = None if model == OPENAI_DEFAULT else model
    job = await service.start(http, file, name, TranscribeRequest(language or None, options, True))
    if stream:
        return service.event_stream(http, job)
    return render(await service.finish(http, job), response_format, verbose_keys=False)


@router.get("/models", summary="Served models (OpenAI shape)", responses=responses(401))
async def list_models(models=Depends(get_models)) -> dict:
    created = int(time.time())
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "k2d", "role": served.entry.role,
         "parameters": served.entry.parameters, "default": name == models.default}
        for name, served in models.models.items()
    ]}
