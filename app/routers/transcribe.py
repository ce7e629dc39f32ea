"""``POST /transcribe``: k2d's own endpoint (timings and segments in every JSON answer)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from app import formats, service
from app.dependencies import require_api_key
from app.errors import responses
from app.formats import ResponseFormat
from app.transcription import TranscribeRequest
from k2d.engine import DecodeOptions

router = APIRouter(dependencies=[Depends(require_api_key)])
TRANSCRIBE_STATUSES = (400, 401, 404, 408, 413, 415, 422, 429, 500, 503)
MAX_PROMPT_CHARS = 2000  # Whisper reads at most 223 prompt tokens; more text is only cost
PROMPT_HELP = "Initial prompt: earlier text or vocabulary the transcript should follow (as in Whisper)"
STREAM_HELP = "Answer text/event-stream: transcript.text.delta per window as it finishes, then transcript.text.done"


def transcription_responses() -> dict:
    """Every status a transcription route can answer, and the media types of its 200."""
    ok = {"description": "The transcript", "model": formats.Transcription,
          "content": {media: {} for media in formats.MEDIA_TYPES.values() if media != "application/json"}
          | {"text/event-stream": {}}}
    return {200: ok, **responses(*TRANSCRIBE_STATUSES)}


def render(result: dict, response_format: ResponseFormat, verbose_keys: bool = True) -> Response:
    if response_format == "text":
        return PlainTextResponse(result["text"] + "\n")
    if response_format == "srt":
        return Response(formats.srt(result["segments"]), media_type=formats.MEDIA_TYPES["srt"])
    if response_format == "vtt":
        return Response(formats.vtt(result["segments"]), media_type=formats.MEDIA_TYPES["vtt"])
    if response_format == "verbose_json" or verbose_keys:
        return JSONResponse({**result, "task": result.get("task", "transcribe")})
    return JSONResponse({"text": result["text"], **({"words": result["words"]} if "words" in result else {})})


@router.post("/transcribe", summary="Transcribe an audio file (WAV, FLAC, MP3, OGG, M4A/AAC, WebM)",
             response_model=None, responses=transcription_responses())
async def transcribe_endpoint(
    http: Request,
    file: Annotated[UploadFile, File(description="Audio file")],
    model: Annotated[str | None, Form(description="Served model, or `student`/`teacher`; default: the student")] = None,
    language: Annotated[str | None, Form(description="ISO code; default: the model card's (zh for zh-en students)")] = None,
    task: Annotated[Literal["transcribe", "translate"], Form()] = "transcribe",
    beam_size: Annotated[int, Form(ge=1, le=10)] = 5,
    temperature: Annotated[float, Form(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.0,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    vad: Annotated[bool, Form(description="Cut at speech pauses and skip silence")] = True,
    word_timestamps: Annotated[bool, Form(description="Per-word start/end in each segment and a top-level words")] = False,
    prompt: Annotated[str | None, Form(max_length=MAX_PROMPT_CHARS, description=PROMPT_HELP)] = None,
    stream: Annotated[bool, Form(description=STREAM_HELP)] = False,
    fallback: Annotated[bool | None, Form(description="A student's windows that fail the loop guard are re-decoded by "
                                                      "its teacher (default: on when the teacher is served)")] = None,
) -> Response:
    options = DecodeOptions(task=task, beam_size=beam_size, temperature=temperature, word_timestamps=word_timestamps,
                            prompt=prompt or None)
    job = await service.start(http, file, model or None, TranscribeRequest(language or None, options, vad, fallback))
    if stream:
        return service.event_stream(http, job)
    result = await service.finish(http, job)
    return render({**result, "task": task}, response_format)
