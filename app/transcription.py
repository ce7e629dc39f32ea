"""One request's way through the model: windows in, a transcript with re-based timestamps out.

:func:`prepare` runs in a worker thread (decode, then VAD); :func:`submit` queues the windows;
:func:`collect` waits for all of them, :func:`stream_events` yields each window's text as soon as
it and every earlier window are done (Server-Sent Events, the OpenAI ``transcript.text.*`` shape).
What decides the transcript is the served model's :class:`k2d.transcribe.ServingCore`, the object ``k2d.load``
and evaluation run too: its windows, the language a request gets, its teacher fallback rule (the cascade's),
the assembly of window results; here the engine step is only scheduled (a queue shared across requests,
deadlines) and the transcript written as JSON.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from app.errors import RequestTimeoutError, error_body, status_of
from app.model_manager import ServedModel
from app.upload import DecodeCancelledError, decode_upload
from k2d.audio import SAMPLE_RATE
from k2d.engine import DecodeOptions
from k2d.textunits import join_texts
from k2d.transcribe import ServingCore, TimedSegment
from k2d.windows import Window

if TYPE_CHECKING:
    from app.admission import Ticket


@dataclass
class TranscribeRequest:
    language: str | None
    options: DecodeOptions
    vad: bool
    fallback: bool | None = None  # a student's flagged windows go to its teacher (None: the deployment's choice)


@dataclass
class Prepared:
    duration: float
    windows: list[Window]
    decode_s: float
    vad_s: float


@dataclass
class Job:
    """A request whose windows are queued: what collecting or streaming its result needs."""

    name: str
    core: ServingCore
    prepared: Prepared
    language: str | None
    futures: list[asyncio.Future]
    arrived: float
    submitted: float
    words: bool

    def cancel(self) -> None:
        for future in self.futures:
            future.cancel()


def prepare(file: BinaryIO, max_seconds: float, core: ServingCore, vad: bool, stop: threading.Event) -> Prepared:
    """Decode (bounded by ``max_seconds``) and cut into the model's windows; runs in a worker thread."""
    started = time.monotonic()
    audio = decode_upload(file, max_seconds, stop)
    decoded = time.monotonic()
    if stop.is_set():
        raise DecodeCancelledError("request abandoned")
    windows = core.windows(audio, vad)
    return Prepared(len(audio) / SAMPLE_RATE, windows, decoded - started, time.monotonic() - decoded)


def submit(served: ServedModel, name: str, prepared: Prepared, request: TranscribeRequest, arrived: float,
           ticket: Ticket | None = None) -> Job:
    """Queue every window of the request at once (the scheduler takes all or none); ``ticket``: its admission."""
    language = served.core.language(request.language)
    audios = [w.audio for w in prepared.windows]
    futures = served.submit(audios, language, request.options, request.fallback, ticket) if audios else []
    return Job(name, served.core, prepared, language, futures, arrived, time.monotonic(),
               request.options.word_timestamps)


async def collect(job: Job) -> dict:
    """Await every window; cancel the rest if one fails or the request is abandoned."""
    try:
        outcomes = await asyncio.gather(*job.futures)
    except BaseException:
        job.cancel()
        raise
    return result(job, outcomes)


def result(job: Job, outcomes: list[tuple]) -> dict:
    """The JSON transcript: segments clamped inside their window, timings whose parts add up to ≤ total."""
    transcript = job.core.transcript(job.prepared.windows, [answer for answer, _, _ in outcomes], job.language)
    segments = [_segment_json(s) for s in transcript.segments]
    body = {
        "text": transcript.text,
        "language": transcript.language,
        "duration": round(job.prepared.duration, 3),
        "segments": segments,
        "model": job.name,
        "timings": _timings(job, outcomes),
    }
    if job.words:
        body["words"] = [w for s in segments for w in s.get("words", [])]
    return body


def _segment_json(seg: TimedSegment) -> dict:
    """A file-relative segment as JSON (``fallback``: the teacher answered its window)."""
    segment = {"id": seg.id, "start": seg.start, "end": seg.end, "text": seg.text, "tokens": seg.tokens,
               "fallback": seg.from_teacher}
    if seg.words is not None:
        segment["words"] = seg.words
    return segment


def _timings(job: Job, outcomes: list[tuple]) -> dict:
    """queue + inference = the time windows were in the model's hands; inference is the wall-clock union
    of the batches that ran them (a batch shared by 8 windows counts once, not 8 times)."""
    done = time.monotonic()
    spans = sorted((job.submitted + q, job.submitted + q + i) for _, q, i in outcomes)
    inference, reach = 0.0, job.submitted
    for start, end in spans:
        start, end = max(start, reach), min(end, done)
        if end > start:
            inference += end - start
            reach = end
    in_model = max(0.0, min(done, max((end for _, end in spans), default=job.submitted)) - job.submitted)
    return {"decode_ms": _ms(job.prepared.decode_s), "vad_ms": _ms(job.prepared.vad_s),
            "queue_ms": _ms(max(0.0, in_model - inference)), "inference_ms": _ms(min(inference, in_model)),
            "total_ms": _ms(done - job.arrived)}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def stream_events(job: Job, deadline: float, timeout_s: float) -> AsyncIterator[bytes]:
    """SSE: one ``transcript.text.delta`` per window in time order as soon as it is ready, then
    ``transcript.text.done``; a failure after the answer has started becomes an ``error`` event."""
    texts: list[str] = []
    sent = ""
    try:
        for future in job.futures:
            window_result, _, _ = await asyncio.wait_for(future, max(deadline - time.monotonic(), 0.001))
            texts.extend(s.text for s in window_result.segments if s.text)
            full = join_texts(texts)
            if len(full) > len(sent):
                yield sse({"type": "transcript.text.delta", "delta": full[len(sent):]})
                sent = full
        yield sse({"type": "transcript.text.done", "text": sent})
    except Exception as err:  # noqa: BLE001 - the status line is sent: report in-band
        if isinstance(err, TimeoutError):
            err = RequestTimeoutError(f"the request took longer than {timeout_s:.0f} s")
        status, kind = status_of(err)
        yield sse({"type": "error", **error_body(status, str(err), kind)})
    finally:
        job.cancel()


def sse(event: dict) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
