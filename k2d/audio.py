"""Audio in and out: anything PyAV decodes becomes 16 kHz mono float32, the rate Whisper expects.

Decoding follows faster-whisper's own recipe (PyAV, FFmpeg's resampler to s16 mono, then float32),
so the server, evaluation and training read audio identically — but it runs incrementally, frame by
frame, so a caller can stop it at a length limit: a 300 kB file can hold ten hours of silence, and
decoding all of it before checking the length costs gigabytes. Float samples that are NaN or
infinite are refused rather than silently clipped into loud noise.

Untrusted bytes (an upload) are opened with ``untrusted=True``: only the audio containers in
:data:`UPLOAD_FORMATS` may read them, and no protocol at all. FFmpeg also has demuxers that are
programs — an ffconcat or HLS playlist opens the files it names, an SDP file binds UDP ports, image2
reads file patterns — and it picks them by sniffing the content, whatever the file is called. Its
``format_whitelist`` is checked after the probe and before the demuxer reads its header, so such an
upload is refused before it opens anything; ``protocol_whitelist`` empty forbids every nested open.
Local files that training and evaluation read are trusted and open with any demuxer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

SAMPLE_RATE = 16_000
_FLOAT_FORMATS = {"flt", "fltp", "dbl", "dblp"}
_GROUP_SECONDS = 10.0  # audio resampled at once: small enough to stop early (and bound memory), big enough to be fast


# FFmpeg demuxer names an upload may use: WAV, FLAC, MP3, Ogg (Opus, Vorbis, FLAC), MP4/M4A/MOV (AAC; the
# demuxer "mov,mp4,m4a,3gp,3g2,mj2"), Matroska/WebM (Opus, Vorbis) and raw ADTS AAC.
UPLOAD_FORMATS = ("wav", "flac", "mp3", "ogg", "mov", "matroska", "aac")
UPLOAD_FORMATS_TEXT = "WAV, FLAC, MP3, OGG (Opus, Vorbis), M4A/MP4 (AAC), WebM/Matroska or AAC (ADTS)"
_UNTRUSTED_OPTIONS = {"format_whitelist": ",".join(UPLOAD_FORMATS), "protocol_whitelist": ""}


class AudioDecodeError(ValueError):
    """Bytes that no PyAV demuxer/decoder accepts, or that contain no audio stream."""


class AudioTooLongError(ValueError):
    """The audio (declared or decoded so far) is longer than the caller's limit."""


class InvalidSamplesError(ValueError):
    """The audio holds NaN or infinite samples: no meaningful waveform to transcribe."""


class DecodeCancelledError(RuntimeError):
    """The caller asked the decode to stop (its request was abandoned or ran out of time)."""


@contextmanager
def open_audio(source: str | Path | BinaryIO, untrusted: bool = False) -> Iterator[av.container.InputContainer]:
    """An input container, closed on exit. ``untrusted``: only :data:`UPLOAD_FORMATS` and no protocol (a path
    is opened by Python and handed over as a file object); every refused or unreadable input raises
    :class:`AudioDecodeError` with one message, which tells nothing about what the bytes asked FFmpeg to open."""
    with ExitStack() as stack:
        if not untrusted:
            container = av.open(str(source) if isinstance(source, Path) else source, mode="r", metadata_errors="ignore")
        else:
            file = stack.enter_context(open(source, "rb")) if isinstance(source, str | Path) else source
            try:
                container = av.open(file, mode="r", metadata_errors="ignore", container_options=_UNTRUSTED_OPTIONS)
            except (av.error.FFmpegError, ValueError, IndexError) as err:
                raise AudioDecodeError(f"cannot decode audio: not a supported audio file (send {UPLOAD_FORMATS_TEXT})") \
                    from err
        with container:
            yield container


def decode_audio(source: str | Path | BinaryIO, max_seconds: float | None = None,
                 stop: threading.Event | None = None, untrusted: bool = False) -> np.ndarray:
    """Decode to mono float32 at 16 kHz, stopping as soon as the output passes ``max_seconds``.

    Raises :class:`AudioDecodeError` for corrupt input, :class:`AudioTooLongError` past the limit
    (before decoding when the container declares a longer duration), :class:`InvalidSamplesError`
    for NaN/Inf samples and :class:`DecodeCancelledError` once ``stop`` is set. ``untrusted=True`` for
    bytes from outside (uploads): see :func:`open_audio`.
    """
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with open_audio(source, untrusted) as container:
            if not container.streams.audio:
                raise AudioDecodeError("cannot decode audio: the file has no audio stream")
            _check_declared(container, max_seconds)
            for chunk in _resampled(container, stop):
                chunks.append(chunk)
                total += len(chunk)
                if limit is not None and total > limit:
                    raise AudioTooLongError(f"audio is longer than the limit of {max_seconds:.0f} s")
    except (AudioTooLongError, InvalidSamplesError, AudioDecodeError):
        raise
    except (av.error.FFmpegError, ValueError, IndexError, StopIteration) as err:
        raise AudioDecodeError(f"cannot decode audio: {err}") from err
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return audio.astype(np.float32) / 32768.0


def declared_seconds(container: av.container.InputContainer) -> float | None:
    """The duration the container's header claims (None when it claims none); may be wrong either way."""
    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _check_declared(container: av.container.InputContainer, max_seconds: float | None) -> None:
    """Refuse before decoding a byte when the header itself says the audio is over the limit."""
    declared = declared_seconds(container)
    if max_seconds is not None and declared is not None and declared > max_seconds + 1:
        raise AudioTooLongError(f"audio is {declared:.0f} s; the limit is {max_seconds:.0f} s")


def _resampled(container: av.container.InputContainer, stop: threading.Event | None) -> Iterator[np.ndarray]:
    """s16 mono 16 kHz chunks, resampled a group of frames at a time (faster-whisper's recipe)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    fifo = av.AudioFifo()
    group = 0
    for frame in _valid_frames(container):
        if stop is not None and stop.is_set():
            raise DecodeCancelledError("decoding stopped")
        _check_finite(frame)
        frame.pts = None  # ignore timestamp gaps, as faster-whisper does
        fifo.write(frame)
        group = group or max(1, int(frame.sample_rate * _GROUP_SECONDS))
        if fifo.samples >= group:
            yield from _to_arrays(resampler.resample(fifo.read()))
    if fifo.samples > 0:
        yield from _to_arrays(resampler.resample(fifo.read()))
    yield from _to_arrays(resampler.resample(None))


def _valid_frames(container: av.container.InputContainer) -> Iterator[av.AudioFrame]:
    """Decoded frames of the first audio stream, skipping frames FFmpeg reports as invalid."""
    frames = iter(container.decode(audio=0))
    while True:
        try:
            yield next(frames)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue


def _check_finite(frame: av.AudioFrame) -> None:
    if frame.format.name in _FLOAT_FORMATS and not np.isfinite(frame.to_ndarray()).all():
        raise InvalidSamplesError("the audio contains NaN or infinite samples")


def _to_arrays(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
    for frame in frames:
        yield frame.to_ndarray().reshape(-1)


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float32 array with FFmpeg's resampler (through PyAV)."""
    if rate == target:
        return audio.astype(np.float32)
    frame = av.AudioFrame.from_ndarray(audio.astype(np.float32)[None, :], format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    out = [f.to_ndarray()[0] for f in resampler.resample(frame)]
    out += [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)


_CODECS = {
    ".flac": ("flac", "s16"),
    ".wav": ("pcm_s16le", "s16"),
    ".ogg": ("libopus", "flt"),
    ".mp3": ("libmp3lame", "fltp"),
    ".m4a": ("aac", "fltp"),
}


def write_audio(path: str | Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """Encode mono float32 audio; the codec follows the file extension (flac, wav, ogg, mp3)."""
    path = Path(path)
    codec, sample_format = _CODECS[path.suffix.lower()]
    clipped = np.clip(audio, -1.0, 1.0)
    samples = (clipped * 32767).astype(np.int16) if sample_format == "s16" else clipped.astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format=sample_format, layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def duration(audio: np.ndarray) -> float:
    return len(audio) / SAMPLE_RATE
