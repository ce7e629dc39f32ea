"""This machine's speed, measured, so that tests derive their deadlines from it instead of assuming one.

A 2-core laptop, a busy CI runner and a CPU without AVX-512 (or ``CT2_FORCE_CPU_ISA=GENERIC``) differ by
several times; a fixed deadline that one of them meets, another misses.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from k2d.audio import SAMPLE_RATE, decode_audio, write_audio
from tests.conftest import DATA

SERVER_CPU_THREADS = 2  # what tests.test_shutdown.start_server gives `k2d serve` (K2D_CPU_THREADS)
SPEECH = ("en_lecture.flac", "mixed_gradient.flac", "zh_lecture.flac", "mixed_batch.mp3", "mixed_loss.ogg")


def long_speech(seconds: float) -> np.ndarray:
    """``seconds`` of the test clips one after another (English, code-switched and Mandarin), repeated."""
    speech = np.concatenate([decode_audio(DATA / name) for name in SPEECH])
    return np.tile(speech, int(seconds * SAMPLE_RATE / len(speech)) + 1)[: int(seconds * SAMPLE_RATE)]


def flac(path: Path, audio: np.ndarray) -> bytes:
    return write_audio(path, audio).read_bytes()


def seconds_per_request(store: Path, model: str, audio: np.ndarray, language: str | None = None, beam_size: int = 5,
                        vad: bool = True, teacher: bool = True) -> float:
    """One request's engine time alone on this machine, through the assembly the server runs (its context,
    guard, repetition penalty and teacher fallback — ``teacher=False`` when the server serves the model
    alone; the server's thread count), after a warm-up call."""
    import k2d
    from k2d.engine import DecodeOptions
    from k2d.policy import DecodePolicy

    served = k2d.load(model, store=store, policy=DecodePolicy(beam_size=beam_size, vad=vad), teacher=teacher,
                      device="cpu", cpu_threads=SERVER_CPU_THREADS)
    options = DecodeOptions(beam_size=beam_size)
    served.transcribe(audio[: 2 * SAMPLE_RATE], language, options)  # first calls pay for allocations
    started = time.perf_counter()
    served.transcribe(audio, language, options)
    return time.perf_counter() - started
