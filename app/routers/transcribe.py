"""``POST /transcribe``: k2d's own endpoint (timings and segments in every JSON answer)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from app import formats
from app.dependencies import get_metrics, get_models, get_settings, require_api_key
from app.formats import ResponseFormat
from app.service import handle
from k2d.engine import DecodeOptions

router = APIRouter(dependencies=[Depends(require_api_key)])


def render(result: dict, response_format: ResponseFormat, verbose_keys: bool = True) -> Response:
    if response_format == "text":
        return PlainTextResponse(result["text"] + "\n")
    if response_format == "srt":
        return Response(formats.srt(result["segments"]), media_type=formats.MEDIA_TYPES["srt"])
    if response_format == "vtt":
        return Response(formats.vtt(result["segments"]), media_type=formats.MEDIA_TYPES["vtt"])
    if response_format == "verbose_json" or verbose_keys:
        return JSONResponse({**result, "task": "transcribe"})
    return JSONResponse({"text": result["text"]})


@router.post("/transcribe", summary="Transcribe an audio file (any format FFmpeg decodes)")
async def transcribe_endpoint(
    file: Annotated[UploadFile, File(description="Audio file")],
    model: Annotated[str | None, Form(description="Served model; default: the student")] = None,
    language: Annotated[str | None, Form(description="ISO code; default: the model card's (zh for zh-en students)")] = None,
    task: Annotated[Literal["transcribe", "translate"], Form()] = "transcribe",
    beam_size: Annotated[int, Form(ge=1, le=10)] = 5,
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    vad: Annotated[bool, Form(description="Cut at speech pauses and skip silence")] = True,
    word_timestamps: Annotated[bool, Form(description="Per-word start/end in each segment")] = False,
    models=Depends(get_models), settings=Depends(get_settings), metrics=Depends(get_metrics),
) -> Response:
    options = DecodeOptions(task=task, beam_size=beam_size, temperature=temperature, word_timestamps=word_timestamps)
    result = await handle(file, model, language or None, options, vad, models, settings, metrics)
    return render(result, response_format)
