"""Upload bytes → 16 kHz mono samples, with the errors a client can cause (415, 400)."""

from __future__ import annotations

import io

import numpy as np

from k2d.audio import AudioDecodeError, decode_audio


class EmptyAudioError(ValueError):
    """The file decoded but holds no samples."""


def decode_upload(data: bytes) -> np.ndarray:
    """Decode any format PyAV reads; raise AudioDecodeError (415) or EmptyAudioError (400)."""
    if not data:
        raise EmptyAudioError("the uploaded file is empty")
    audio = decode_audio(io.BytesIO(data))
    if audio.size == 0:
        raise EmptyAudioError("the file contains no audio samples")
    return audio


__all__ = ["AudioDecodeError", "EmptyAudioError", "decode_upload"]
