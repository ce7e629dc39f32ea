"""Chunked encoding for a streaming student: each new chunk of audio is encoded with a little left context
and no future beyond the chunk, and only the chunk's own frames are kept.

Training (``k2d_train/stages/s7_distill_ctc.py``) and serving (the WebSocket endpoint) cut audio with this
one function, so the head learns on exactly the frames it is given live. The encoder's attention sees
``left_s`` of past audio plus the chunk: latency is one chunk, cost per second of audio is
(left + chunk) / chunk times the non-streaming one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from k2d.audio import SAMPLE_RATE
from k2d.context import ENCODER_FRAME_S


@dataclass(frozen=True)
class StreamWindows:
    chunk_s: float = 0.64
    left_s: float = 1.28

    @property
    def chunk_samples(self) -> int:
        return int(round(self.chunk_s * SAMPLE_RATE))

    @property
    def chunk_frames(self) -> int:
        return int(round(self.chunk_s / ENCODER_FRAME_S))

    def window(self, audio: np.ndarray, index: int) -> tuple[np.ndarray, int]:
        """Chunk ``index``'s encoder input (left context + the chunk) and the frame its own frames start at."""
        end = min(len(audio), (index + 1) * self.chunk_samples)
        start = index * self.chunk_samples
        begin = max(0, start - int(round(self.left_s * SAMPLE_RATE)))
        return audio[begin:end], int(round((start - begin) / SAMPLE_RATE / ENCODER_FRAME_S))

    def chunks(self, samples: int) -> int:
        return max(1, -(-samples // self.chunk_samples))

    def to_dict(self) -> dict:
        return {"chunk_s": self.chunk_s, "left_s": self.left_s}
