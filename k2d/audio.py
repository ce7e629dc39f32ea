"""Audio in and out: anything PyAV decodes becomes 16 kHz mono float32, the rate Whisper expects.

Decoding is faster-whisper's own (PyAV based), so the server, evaluation and training read audio
identically; this module only adds resampling of in-memory arrays and writing files.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

SAMPLE_RATE = 16_000


class AudioDecodeError(ValueError):
    """Bytes that no PyAV demuxer/decoder accepts, or that contain no audio stream."""


def decode_audio(source: str | Path | BinaryIO) -> np.ndarray:
    """Decode to mono float32 at 16 kHz; raise :class:`AudioDecodeError` for corrupt input."""
    from faster_whisper.audio import decode_audio as fw_decode

    try:
        audio = fw_decode(str(source) if isinstance(source, Path) else source, sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, ValueError, IndexError, StopIteration) as err:
        raise AudioDecodeError(f"cannot decode audio: {err}") from err
    return np.asarray(audio, dtype=np.float32)


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
