"""One utterance through the serving path, synchronously: what ``k2d evaluate`` measures.

The server queues windows from many requests; evaluation has one request at a time. Everything
else is the same code: the same VAD windows, the same engine and context policy, the same loop
guard, the same teacher fallback for flagged student windows, the same text joining. So a
reported MER is the MER users get.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import groupby

import numpy as np

from k2d.engine import DecodeOptions, WhisperEngine, WindowResult
from k2d.guard import SampleOn
from k2d.textunits import join_texts
from k2d.windows import Window, split


@dataclass
class Transcript:
    text: str
    windows: list[WindowResult] = field(default_factory=list)

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
        return sum(1 for w in self.windows if w.fallback)


def decode_windows(engine: WhisperEngine, windows: list[np.ndarray], language: str | None, options: DecodeOptions,
                   batch_size: int = 8) -> list[WindowResult]:
    """Windows grouped by their feature length (the scheduler's batch key), in batches."""
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


def cascade(results: list[WindowResult], windows: list[np.ndarray], teacher: WhisperEngine, options: DecodeOptions,
            batch_size: int = 8) -> list[WindowResult]:
    """Flagged student windows re-decoded by the teacher; its transcript replaces the student's."""
    flagged = [i for i, r in enumerate(results) if r.escalate]
    if not flagged:
        return results
    # the student's language (given or detected) holds for the teacher too
    redone = decode_windows(teacher, [windows[i] for i in flagged], results[flagged[0]].language, options, batch_size)
    for i, result in zip(flagged, redone, strict=True):
        results[i] = result.as_fallback_for(results[i])
    return results


def transcribe(engine: WhisperEngine, audio: np.ndarray, language: str | None, options: DecodeOptions,
               vad: bool = True, min_silence_ms: int = 500, teacher: WhisperEngine | None = None,
               fallback_sampling: SampleOn = "all") -> Transcript:
    """Windows → guarded batches → optional teacher fallback → joined text. ``fallback_sampling``: which of
    its own flags the standing-in teacher re-decodes by sampling (the server's ``K2D_FALLBACK_SAMPLING``)."""
    windows: list[Window] = split(audio, vad, min_silence_ms, engine.policy.max_window_s)
    if not windows:
        return Transcript("")
    audios = [w.audio for w in windows]
    results = decode_windows(engine, audios, language, options)
    if teacher is not None:
        results = cascade(results, audios, teacher, replace(options, sample_on=fallback_sampling))
    for result in results:
        if result.escalate:  # meant for a teacher that is not there: cut the loop instead
            result.trim_loop()
    return Transcript(join_texts([r.text for r in results]), results)
