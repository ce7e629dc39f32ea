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


class StreamDecoder:
    """Live transcription with a streaming CTC student: audio in as it arrives, new text out per chunk.

    Each complete chunk is encoded with its left context (:class:`StreamWindows`, as in training), its
    frames are labelled, and units continue the greedy CTC path across chunk boundaries (a unit repeated
    over a boundary is one unit). ``finish`` encodes the last, partial chunk. Work per call is bounded by
    the audio given: one encoder pass per 0.64 s chunk."""

    def __init__(self, engine, windows: StreamWindows | None = None):
        streaming = engine.head.get("streaming")
        if engine.kind != "ctc" or not streaming:
            raise ValueError(f"{engine.path.name} was not trained for streaming (distill_ctc.streaming: true)")
        self.engine, self.windows = engine, windows or StreamWindows(**streaming)
        self.audio = np.zeros(0, np.float32)
        self.done_chunks, self.units, self.previous = 0, [], engine.units.blank

    @property
    def text(self) -> str:
        return self.engine.units.text(self.units)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def feed(self, samples: np.ndarray) -> str:
        """Append 16 kHz mono samples; return the text that became final with the chunks completed now."""
        self.audio = np.concatenate([self.audio, samples.astype(np.float32)])
        before = len(self.units)
        while (self.done_chunks + 1) * self.windows.chunk_samples <= len(self.audio):
            self._decode_chunk()
        return self.engine.units.text(self.units[before:]) if len(self.units) > before else ""

    def finish(self) -> str:
        """Decode what is left of the last chunk; the whole transcript."""
        if self.done_chunks * self.windows.chunk_samples < len(self.audio):
            self._decode_chunk()
        return self.text

    def _decode_chunk(self) -> None:
        window, first = self.windows.window(self.audio, self.done_chunks)
        logprobs = self.engine.window_logprobs(window)
        own = logprobs[first : first + self.windows.chunk_frames]
        last_frames = max(1, round((len(window) / SAMPLE_RATE) / ENCODER_FRAME_S) - first)
        for unit in own[:last_frames].argmax(-1):
            if unit != self.previous and unit != self.engine.units.blank:
                self.units.append(int(unit))
            self.previous = int(unit)
        self.done_chunks += 1

