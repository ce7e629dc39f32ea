"""The one log-mel path for training, evaluation and serving: faster-whisper's.

faster-whisper computes the log-mel spectrogram on the raw audio and zero-pads the *features*;
transformers pads the *waveform* to 30 s first, which changes the normalisation of short clips
and therefore greedy outputs. The server runs this function, so a student trained on it sees
exactly what it will be served with — including the short context of its ``ContextPolicy``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from k2d.context import FULL_FRAMES


@lru_cache(maxsize=4)
def feature_extractor(num_mel_bins: int = 80):
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=num_mel_bins)


def log_mel(audio: np.ndarray, frames: int = FULL_FRAMES, extractor=None, num_mel_bins: int = 80) -> np.ndarray:
    """(mels, frames) float32 for one window: features of the audio, zero-padded or cut to ``frames``."""
    from faster_whisper.audio import pad_or_trim

    extractor = extractor or feature_extractor(num_mel_bins)
    return np.ascontiguousarray(pad_or_trim(extractor(audio), frames), dtype=np.float32)
