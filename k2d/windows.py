"""16 kHz mono audio → ≤ 30 s windows cut at speech pauses, each with its offset.

Whisper sees 30 s at a time; cutting long audio at silences (Silero VAD, as shipped with
faster-whisper) instead of every 30 s keeps words whole, and dropping non-speech avoids
Whisper's classic hallucinations on silence. Timestamps are re-based with each window's offset.
:func:`cut` is the one way every serving path (server, ``k2d.load``, evaluation) turns audio into windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from k2d.audio import SAMPLE_RATE

MAX_WINDOW_S = 30.0
SILENCE_RMS = 1e-4  # -80 dBFS: below any recorded speech; digital silence and 1-LSB dither sit under it


@dataclass
class Window:
    offset: float  # seconds from the start of the upload
    audio: np.ndarray


def fixed_windows(audio: np.ndarray, max_window_s: float = MAX_WINDOW_S) -> list[Window]:
    size = int(max_window_s * SAMPLE_RATE)
    return [Window(i / SAMPLE_RATE, audio[i : i + size]) for i in range(0, len(audio), size)]


def speech_windows(audio: np.ndarray, min_silence_ms: int = 500, max_window_s: float = MAX_WINDOW_S) -> list[Window]:
    """Speech regions merged greedily into windows ≤ ``max_window_s`` (the model's longest trained
    input, 30 s for Whisper); regions longer than that are split."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(min_silence_duration_ms=min_silence_ms, max_speech_duration_s=max(1.0, max_window_s - 1),
                         speech_pad_ms=200)
    regions = get_speech_timestamps(audio, options)
    windows: list[tuple[int, int]] = []
    limit = int(max_window_s * SAMPLE_RATE)
    for region in regions:
        start, end = region["start"], region["end"]
        if windows and end - windows[-1][0] <= limit:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, min(end, start + limit)))
    return [Window(start / SAMPLE_RATE, audio[start:end]) for start, end in windows]


def split(audio: np.ndarray, vad: bool, min_silence_ms: int = 500, max_window_s: float = MAX_WINDOW_S) -> list[Window]:
    max_window_s = min(max_window_s, MAX_WINDOW_S)
    return speech_windows(audio, min_silence_ms, max_window_s) if vad else fixed_windows(audio, max_window_s)


def silent(audio: np.ndarray) -> bool:
    return audio.size == 0 or float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < SILENCE_RMS


def cut(audio: np.ndarray, vad: bool, min_silence_ms: int = 500, max_window_s: float = MAX_WINDOW_S) -> list[Window]:
    """The windows a model is given, on every path: :func:`split`, less the silent ones. Pure silence then costs
    nothing and cannot turn into a hallucinated loop, with or without VAD."""
    if silent(audio):
        return []
    return [w for w in split(audio, vad, min_silence_ms, max_window_s) if not silent(w.audio)]
