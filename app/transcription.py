"""One request's way through the service: windows in, a transcript with re-based timestamps out."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from app.model_manager import ServedModel
from k2d.engine import DecodeOptions
from k2d.windows import split

SAMPLE_RATE = 16000


@dataclass
class TranscribeRequest:
    language: str | None
    options: DecodeOptions
    vad: bool


async def transcribe(audio: np.ndarray, served: ServedModel, name: str, request: TranscribeRequest,
                     min_silence_ms: int) -> dict:
    """Queue every window of this request, await them all, stitch segments back in time order."""
    started = time.monotonic()
    windows = await asyncio.to_thread(split, audio, request.vad, min_silence_ms)
    language = request.language or served.default_language
    futures = served.submit([w.audio for w in windows], language, request.options) if windows else []
    try:
        outcomes = await asyncio.gather(*futures)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    segments, languages = [], []
    for window, (result, _, _) in zip(windows, outcomes, strict=True):
        languages.append(result.language)
        for seg in result.segments:
            segment = {"id": len(segments), "start": round(window.offset + seg.start, 2),
                       "end": round(window.offset + seg.end, 2), "text": seg.text, "tokens": seg.tokens}
            if seg.words is not None:
                segment["words"] = [{**w, "start": round(window.offset + w["start"], 2),
                                     "end": round(window.offset + w["end"], 2)} for w in seg.words]
            segments.append(segment)
    queue_s = max((o[1] for o in outcomes), default=0.0)
    inference_s = sum(o[2] for o in outcomes)
    text = _join([s["text"] for s in segments])
    return {
        "text": text,
        "language": max(set(languages), key=languages.count) if languages else (language or "en"),
        "duration": round(len(audio) / SAMPLE_RATE, 3),
        "segments": segments,
        "model": name,
        "timings": {"queue_ms": round(queue_s * 1000, 1), "inference_ms": round(inference_s * 1000, 1),
                    "total_ms": round((time.monotonic() - started) * 1000, 1)},
    }


def _join(texts: list[str]) -> str:
    """Join segment texts; no space between two CJK ends (Mandarin has none), one otherwise."""
    out = ""
    for text in texts:
        if out and not (_cjk(out[-1]) and _cjk(text[0])):
            out += " "
        out += text
    return out


def _cjk(char: str) -> bool:
    return "\u3400" <= char <= "\u9fff" or "\u3000" <= char <= "\u303f" or "\uff00" <= char <= "\uffef"
