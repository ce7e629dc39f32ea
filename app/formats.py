"""Response bodies: json, text, srt, vtt, verbose_json (the OpenAI audio API's set), and their schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain; charset=utf-8",
               "srt": "application/x-subrip; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}


class Word(BaseModel):
    word: str
    start: float
    end: float
    probability: float | None = None


class Segment(BaseModel):
    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    words: list[Word] | None = None


class Transcription(BaseModel):
    """The JSON answer; OpenAI's plain ``json`` format has ``text`` (and ``words`` when asked) only."""

    text: str
    language: str | None = None
    duration: float | None = None
    segments: list[Segment] | None = None
    words: list[Word] | None = None
    model: str | None = None
    task: str | None = None
    timings: dict[str, float] | None = None


def _clock(seconds: float, separator: str) -> str:
    millis = round(max(seconds, 0.0) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(segments: list[dict]) -> str:
    blocks = [f"{i}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text']}\n"
              for i, s in enumerate(segments, 1)]
    return "\n".join(blocks)


def vtt(segments: list[dict]) -> str:
    blocks = [f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text']}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)
