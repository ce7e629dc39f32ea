"""The one log-mel path for training, evaluation and serving: faster-whisper's.

faster-whisper computes the log-mel spectrogram on the raw audio and zero-pads the *features*
to 3,000 frames; transformers pads the *waveform* to 30 s first, which changes the normalisation
(log-mel max) of short clips and therefore greedy outputs. The server runs faster-whisper, so the
student is trained on exactly the features it will be served with.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=4)
def feature_extractor(num_mel_bins: int = 80):
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=num_mel_bins)


def whisper_features(audio: np.ndarray, extractor=None, num_mel_bins: int = 80) -> np.ndarray:
    """(mels, 3000) float32, exactly as faster-whisper feeds one ≤ 30 s window to the encoder."""
    from faster_whisper.audio import pad_or_trim

    extractor = extractor or feature_extractor(num_mel_bins)
    return np.ascontiguousarray(pad_or_trim(extractor(audio)), dtype=np.float32)
