"""Upload → 16 kHz mono samples, with the errors a client can cause (415, 413, 400).

Uploads are untrusted: both steps open them with :func:`k2d.audio.open_audio`'s ``untrusted`` mode, so
only the audio containers of :data:`k2d.audio.UPLOAD_FORMATS` read them and FFmpeg opens nothing else
(no playlist, concat list, SDP, image sequence or protocol: 415 before any I/O).

Two steps, so that cheap checks come before expensive ones: :func:`probe` opens the container and
reads only its header (the declared duration, for admission control and an early 413), and
:func:`decode_upload` decodes incrementally, stopping at the audio limit or when told to stop.
"""

from __future__ import annotations

import threading
from typing import BinaryIO

import av
import numpy as np

from k2d.audio import (
    AudioDecodeError,
    AudioTooLongError,
    DecodeCancelledError,
    InvalidSamplesError,
    _check_declared,
    declared_seconds,
    decode_audio,
    open_audio,
)


class EmptyAudioError(ValueError):
    """The file decoded but holds no samples."""


def probe(file: BinaryIO, max_seconds: float) -> float | None:
    """The duration the header declares (None if it declares none); 415 for non-audio, 413 when over the limit."""
    if _size(file) == 0:
        raise EmptyAudioError("the uploaded file is empty")
    file.seek(0)
    try:
        with open_audio(file, untrusted=True) as container:
            if not container.streams.audio:
                raise AudioDecodeError("cannot decode audio: the file has no audio stream")
            _check_declared(container, max_seconds)  # the decoder's own rule: 413 on the header's claim alone
            declared = declared_seconds(container)
    except (av.error.FFmpegError, ValueError, IndexError) as err:
        if isinstance(err, AudioDecodeError | AudioTooLongError):
            raise
        raise AudioDecodeError(f"cannot decode audio: {err}") from err
    finally:
        file.seek(0)
    return declared


def decode_upload(file: BinaryIO, max_seconds: float, stop: threading.Event | None = None) -> np.ndarray:
    """Decode at most ``max_seconds`` of audio; raise AudioDecodeError (415), AudioTooLongError (413),
    EmptyAudioError or InvalidSamplesError (400), DecodeCancelledError once ``stop`` is set."""
    if _size(file) == 0:
        raise EmptyAudioError("the uploaded file is empty")
    file.seek(0)
    audio = decode_audio(file, max_seconds=max_seconds, stop=stop, untrusted=True)
    if audio.size == 0:
        raise EmptyAudioError("the file contains no audio samples")
    return audio


def _size(file: BinaryIO) -> int:
    file.seek(0, 2)
    return file.tell()


__all__ = ["AudioDecodeError", "AudioTooLongError", "DecodeCancelledError", "EmptyAudioError", "InvalidSamplesError",
           "decode_upload", "probe"]
