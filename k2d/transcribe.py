"""The serving core, and one file through it synchronously: the Python API and what ``k2d evaluate`` measures.

Every path runs the same steps: :func:`k2d.windows.cut` (VAD windows, silence dropped) → the engine assembled
by :mod:`k2d.served` (guard, context, penalty) → the teacher fallback rule (:class:`k2d.cascade.TeacherFallback`)
→ :func:`assemble` (re-based segments, joined text, one language rule). The server (``app/transcription.py``)
only schedules the middle step differently (a queue shared by concurrent requests); :class:`Transcriber`
runs it in batches for one caller. So a reported MER is the MER users get.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import BinaryIO

import numpy as np

from k2d.audio import SAMPLE_RATE, decode_audio
from k2d.cascade import TeacherFallback
from k2d.engine import DecodeOptions, Segment, WindowResult
from k2d.textunits import join_texts
from k2d.windows import Window, cut


@dataclass
class TimedSegment:
    """A segment on the whole file's clock (a window's segment plus the window's offset, clamped to it)."""

    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    from_teacher: bool = False  # teacher fallback answered this window
    words: list[dict] | None = None


def rebase(window: Window, found: list[Segment], first_id: int = 0) -> list[TimedSegment]:
    """Window-relative segments → file-relative, clamped so that offset ≤ start ≤ end ≤ window end."""
    low, high = window.offset, window.offset + len(window.audio) / SAMPLE_RATE
    out = []
    for seg in found:
        start = _clamp(window.offset + seg.start, low, high)
        words = None if seg.words is None else [
            {**w, "start": (s := _clamp(window.offset + w["start"], low, high)),
             "end": _clamp(window.offset + w["end"], s, high)} for w in seg.words]
        out.append(TimedSegment(first_id + len(out), start, _clamp(window.offset + seg.end, start, high), seg.text,
                                seg.tokens, seg.from_teacher, words))
    return out


def transcript_language(languages: list[str], requested: str | None) -> str:
    """A transcript's language, the same rule on every path: its windows' most common language, a tie going
    to the one heard first (deterministic); with no window (silence), the language asked for or the model's
    own, else en."""
    if languages:
        return Counter(languages).most_common(1)[0][0]  # equal counts keep first-seen order
    return requested or "en"


def _clamp(value: float, low: float, high: float) -> float:
    return round(min(max(value, low), high), 2)


@dataclass
class Transcript:
    text: str
    segments: list[TimedSegment] = field(default_factory=list)
    windows: list[WindowResult] = field(default_factory=list)
    language: str | None = None

    @property
    def flagged(self) -> int:
        """Windows whose final transcript still failed the guard."""
        return sum(1 for w in self.windows if w.flag)

    @property
    def trimmed(self) -> int:
        """Windows whose loop survived every fallback and was cut back (``WindowResult.trim_loop``)."""
        return sum(1 for w in self.windows if "trimmed" in w.triggered)

    @property
    def fallbacks(self) -> int:
        """Windows answered by the teacher (teacher fallback)."""
        return sum(1 for w in self.windows if w.from_teacher)


def assemble(windows: list[Window], results: list[WindowResult], requested: str | None) -> Transcript:
    """Window results (final: guard and teacher fallback done) → the transcript every path returns: segments on
    the file's clock, the text joined across windows, the language rule of :func:`transcript_language`
    (``requested``: the language asked for, or the model's own, used when there is no window)."""
    segments: list[TimedSegment] = []
    for window, result in zip(windows, results, strict=True):
        segments += rebase(window, result.segments, len(segments))
    return Transcript(join_texts([s.text for s in segments]), segments, results,
                      transcript_language([r.language for r in results], requested))


def decode_windows(engine, windows: list[np.ndarray], language: str | None, options: DecodeOptions,
                   batch_size: int = 8) -> list[WindowResult]:
    """Windows grouped by their feature length (the frames part of the scheduler's batch key), in batches."""
    results: list[WindowResult | None] = [None] * len(windows)
    order = sorted(range(len(windows)), key=lambda i: engine.frames(windows[i]))
    for _, group in groupby(order, key=lambda i: engine.frames(windows[i])):
        indices = list(group)
        for begin in range(0, len(indices), batch_size):
            batch = indices[begin : begin + batch_size]
            for i, result in zip(batch, engine.transcribe_batch([windows[i] for i in batch], [language] * len(batch),
                                                                options), strict=True):
                results[i] = result
    return results  # type: ignore[return-value]


class ServingCore:
    """What decides a transcript for one served model, the same object on every path (the server's model manager builds one
    per served model, :func:`k2d.load` and evaluation get a :class:`Transcriber`, which is one): its windows,
    the language a request gets, its teacher fallback rule and the assembly of window results. The paths differ
    only in how they run the engine step between :meth:`windows` and :meth:`transcript` — the server through a
    queue shared by concurrent requests (``app/batching.py``, ``app/guarded.py`` with :attr:`rule`), a
    :class:`Transcriber` in batches for one caller."""

    def __init__(self, served):
        """``served``: a :class:`k2d.served.Served` (build one with :func:`k2d.load`)."""
        self.served = served
        self.rule = TeacherFallback(served.policy.teacher_sampling)

    @property
    def name(self) -> str:
        return self.served.name

    @property
    def engine(self):
        return self.served.engine

    def windows(self, samples: np.ndarray, vad: bool | None = None) -> list[Window]:
        """The model's windows of 16 kHz samples (``vad``: a request's choice, else the model's policy)."""
        policy = self.served.policy
        return cut(samples, policy.vad if vad is None else vad, policy.vad_min_silence_ms,
                   self.engine.policy.max_window_s)

    def language(self, requested: str | None) -> str | None:
        """The language a request gets: the one it asked for, else the model's own (None: detected)."""
        return requested or self.served.default_language

    def transcript(self, windows: list[Window], results: list[WindowResult], language: str | None) -> Transcript:
        """Final window results (guard and teacher fallback done) → the transcript; ``language``: the request's,
        as :meth:`language` resolved it."""
        return assemble(windows, results, language)


class Transcriber(ServingCore):
    """A served model (and its teacher) called from Python: ``k2d.load(name).transcribe("talk.flac")``."""

    def transcribe(self, audio: str | Path | BinaryIO | np.ndarray, language: str | None = None,
                   options: DecodeOptions | None = None) -> Transcript:
        """Audio (a path, a file object or 16 kHz mono float32 samples) → text and timed segments.
        ``language``: an ISO code; default the model's own (zh for a zh-en student), else detected."""
        samples = audio if isinstance(audio, np.ndarray) else decode_audio(audio)
        options = options or DecodeOptions(beam_size=self.served.policy.beam_size)
        windows, language = self.windows(samples), self.language(language)
        audios = [w.audio for w in windows]
        results = decode_windows(self.engine, audios, language, options)
        self._fall_back(results, audios, options)
        return self.transcript(windows, results, language)

    __call__ = transcribe

    def _fall_back(self, results: list[WindowResult], audios: list[np.ndarray], options: DecodeOptions) -> None:
        """Teacher fallback for every flagged window (one batch for the teacher), else the loop cut back."""
        flagged = [i for i, r in enumerate(results) if self.rule.wanted(r)]
        teacher = self.served.teacher
        if flagged and teacher is not None:
            # the student's language (given or detected) holds for the teacher too
            redone = decode_windows(teacher.engine, [audios[i] for i in flagged], results[flagged[0]].language,
                                    self.rule.options(options))
            for i, answer in zip(flagged, redone, strict=True):
                results[i] = self.rule.answer(results[i], answer)
        for i in flagged:
            if not results[i].from_teacher:
                self.rule.without_teacher(results[i])
