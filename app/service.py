"""The request path shared by both transcription endpoints, cheapest checks first.

model (aliases ``student``/``teacher``) → options valid for that model (422) → admission on the
load alone (429 at once) → container header (415, 413 on a declared length) → admission with the
header's length (429, still before any decoding) → bounded decode + VAD in a worker thread (413 at
the limit, not after) → queue → result or event stream. One deadline, set when the request arrived,
covers all of it (408 for the upload, 503 after).
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import Request, UploadFile
from fastapi.responses import StreamingResponse

from app.admission import Admission, Ticket
from app.batching import QueueFullError
from app.errors import RequestTimeoutError, UnsupportedOptionError
from app.lifecycle import attribute_to, deadline_of
from app.model_manager import ModelManager, ServedModel
from app.settings import Settings
from app.transcription import Job, TranscribeRequest, collect, prepare, stream_events, submit
from app.upload import probe
from k2d.audio import SAMPLE_RATE
from k2d.languages import WHISPER_LANGUAGES
from k2d.registry import resolve_alias

LANGUAGES = frozenset(WHISPER_LANGUAGES)  # "endoftext", "translate" or "0.00" are tokens, not languages
LIST_FIELDS = frozenset({"timestamp_granularities[]"})  # the only form fields a client may repeat
BYTES_PER_SECOND_GUESS = 4000  # 32 kbit/s: a low speech bitrate, so a header without a duration is not under-counted


def resolve(models: ModelManager, requested: str | None) -> tuple[str, ServedModel]:
    """A served model by name, or by role (``student``/``teacher``) when no model has that name."""
    roles = {name: served.entry.role for name, served in models.models.items()}
    return models.get(resolve_alias(requested, roles, models.default))


def validate(name: str, served: ServedModel, request: TranscribeRequest) -> None:
    """Refuse (422) what this model would silently get wrong: unknown languages, translation it cannot do."""
    engine, language = served.scheduler.engine, request.language
    if language is not None:
        if language not in LANGUAGES:
            raise UnsupportedOptionError(f"unknown language {language!r} (use an ISO 639-1 code such as zh or en)")
        if not engine.knows_language(language):
            raise UnsupportedOptionError(f"model {name!r} does not transcribe the language {language!r}"
                                         f"{' (English only)' if engine.knows_language('en') else ''}")
    elif served.core.language(None) is None and not engine.capabilities.detects_language:
        raise UnsupportedOptionError(f"model {name!r} cannot detect the language (its vocabulary was trimmed); "
                                     "name one, e.g. language=zh")
    if request.options.prompt and not engine.capabilities.prompts:
        raise UnsupportedOptionError(f"model {name!r} has no decoder to prompt (a CTC / transducer student)")
    if request.options.task == "translate" and not translates(served):
        raise UnsupportedOptionError(f"model {name!r} does not translate; use task=transcribe or a teacher model")


def translates(served: ServedModel) -> bool:
    """Multilingual Whisper translates; a distilled student only if its card says it was trained to."""
    if not served.scheduler.engine.capabilities.translates:
        return False
    if served.entry.role != "student":
        return True
    card = served.entry.card
    return bool(card.get("translates")) or "translate" in (card.get("tasks") or [])


@asynccontextmanager
async def within(deadline: float, timeout_s: float, retry_after: Callable[[], int] | None = None):
    """Run the block under the request's deadline (``time.monotonic()`` clock); 503 when it passes, with a
    Retry-After from ``retry_after`` (admission's estimate of when the work ahead will have drained)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
            yield
    except TimeoutError as err:
        raise RequestTimeoutError(f"the request took longer than {timeout_s:.0f} s",
                                  retry_after() if retry_after else 1) from err


def _later(admission: Admission, name: str, served: ServedModel) -> Callable[[], int]:
    return lambda: admission.retry_after_typical(name, served)


async def start(http: Request, upload: UploadFile, model: str | None, request: TranscribeRequest) -> Job:
    """Everything up to the request's windows being in the model's queue."""
    state = http.app.state
    models, settings = state.models, state.settings
    admission: Admission = state.admission
    await _each_field_once(http)
    name, served = resolve(models, model)
    attribute_to(http, name, state.metrics)
    validate(name, served, request)
    deadline = deadline_of(http)
    arrived = deadline - settings.request_timeout_s
    admission.precheck(name, served, deadline)
    async with within(deadline, settings.request_timeout_s, _later(admission, name, served)):
        data = await upload.read()  # the request's own copy: worker threads may outlive the upload's temp file
        declared = await asyncio.to_thread(probe, io.BytesIO(data), settings.max_audio_s)
        ticket = await admission.admit_measured(name, served, _estimate(declared, len(data), settings), deadline)
        _close_with_request(ticket)  # however the request ends, it is no longer work ahead of anyone
        prepared = await admission.run_bounded(prepare, io.BytesIO(data), settings.max_audio_s, served.core,
                                               request.vad, stop=threading.Event(), ticket=ticket)
        try:
            job = submit(served, name, prepared, request, arrived, ticket)
        except QueueFullError as err:
            err.retry_after = admission.retry_after_typical(name, served)
            raise
        ticket.queued(job.futures, admission.windows_nominal(served, [len(w.audio) / SAMPLE_RATE for w in prepared.windows]))
    _cancel_with_request(job)
    return job


async def _each_field_once(http: Request) -> None:
    """A repeated form field would silently be read as its last value (two ``file`` parts: the second one
    transcribed, the first ignored): 422 instead. The form was parsed already; this reads FastAPI's copy."""
    form = await http.form()
    repeated = sorted({key for key, _ in form.multi_items() if key not in LIST_FIELDS and len(form.getlist(key)) > 1})
    if repeated:
        raise UnsupportedOptionError(f"send each form field once; repeated: {', '.join(repeated)}")


def _close_with_request(ticket: Ticket) -> None:
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(lambda _: ticket.close())


def _cancel_with_request(job: Job) -> None:
    """However the request ends (answered, failed, abandoned, a stream never started), its windows stop."""
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(lambda _: job.cancel())


def _estimate(declared: float | None, size: int, settings: Settings) -> float:
    """Audio seconds to reserve before decoding: the header's claim, else a guess from the size."""
    if declared is not None:
        return declared
    return min(settings.max_audio_s, size / BYTES_PER_SECOND_GUESS)


async def finish(http: Request, job: Job) -> dict:
    """Wait for every window of a queued request (within its deadline)."""
    state = http.app.state
    later = _later(state.admission, job.name, state.models.models[job.name])
    try:
        async with within(deadline_of(http), state.settings.request_timeout_s, later):
            return await collect(job)
    finally:
        job.cancel()


def event_stream(http: Request, job: Job) -> StreamingResponse:
    """``text/event-stream`` of the transcript as windows finish (the deadline still applies)."""
    settings: Settings = http.app.state.settings
    events = stream_events(job, deadline_of(http), settings.request_timeout_s)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
