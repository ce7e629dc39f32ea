"""Chunked encoding for a streaming student: each new chunk of audio is encoded with a little left context
and no future beyond the chunk, and only the chunk's own frames are kept.

Training (``k2d_train/stages/s7_distill_ctc.py``) and serving (the WebSocket endpoint) cut audio with this
one function, so the head learns on exactly the frames it is given live. The encoder's attention sees
``left_s`` of past audio plus the chunk: latency is one chunk, cost per second of audio is
(left + chunk) / chunk times the non-streaming one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
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

    @property
    def left_samples(self) -> int:
        return int(round(self.left_s * SAMPLE_RATE))

    def bounds(self, index: int, samples: int) -> tuple[int, int, int]:
        """Chunk ``index`` of ``samples`` of audio: its encoder input is ``audio[begin:end]`` (left context + the
        chunk), and its own frames start at frame ``first`` of that input."""
        start = index * self.chunk_samples
        begin, end = max(0, start - self.left_samples), min(samples, start + self.chunk_samples)
        return begin, end, int(round((start - begin) / SAMPLE_RATE / ENCODER_FRAME_S))

    def window(self, audio: np.ndarray, index: int) -> tuple[np.ndarray, int]:
        """Chunk ``index``'s encoder input (left context + the chunk) and the frame its own frames start at."""
        begin, end, first = self.bounds(index, len(audio))
        return audio[begin:end], first

    def chunks(self, samples: int) -> int:
        return max(1, -(-samples // self.chunk_samples))

    def to_dict(self) -> dict:
        return {"chunk_s": self.chunk_s, "left_s": self.left_s}


class StreamBuffer:
    """A live stream's audio, cut into the same windows as :meth:`StreamWindows.window` — in linear cost.

    Pieces are kept as they arrive (no copy on append); a window is assembled from the pieces it
    overlaps (one copy of ``left + chunk`` samples per chunk), and pieces no later window reaches are
    dropped, so memory stays at about one window plus the largest message, however long the stream.
    ``copied`` counts the samples copied so far: the work per second of audio stays flat."""

    def __init__(self, windows: StreamWindows):
        self.windows = windows
        self.pieces: deque[np.ndarray] = deque()
        self.offset = 0  # stream index of the first sample of pieces[0]
        self.total = 0  # samples appended so far
        self.next_chunk = 0  # the first chunk not yet windowed
        self.copied = 0

    @property
    def held(self) -> int:
        return self.total - self.offset

    def append(self, samples: np.ndarray) -> None:
        if len(samples):
            self.pieces.append(samples)
            self.total += len(samples)

    def ready(self) -> Iterator[tuple[np.ndarray, int]]:
        """(window, first own frame) of every chunk that is complete now and was not returned before."""
        while (self.next_chunk + 1) * self.windows.chunk_samples <= self.total:
            yield self._take()

    def rest(self) -> tuple[np.ndarray, int] | None:
        """The last, partial chunk's window (None if every sample is in a chunk already returned)."""
        return self._take() if self.next_chunk * self.windows.chunk_samples < self.total else None

    def _take(self) -> tuple[np.ndarray, int]:
        begin, end, first = self.windows.bounds(self.next_chunk, self.total)
        window = self._slice(begin, end)
        self.next_chunk += 1
        self._drop_before(self.windows.bounds(self.next_chunk, self.total)[0])
        return window, first

    def _slice(self, begin: int, end: int) -> np.ndarray:
        parts, position = [], self.offset
        for piece in self.pieces:
            if position >= end:
                break
            low, high = max(begin - position, 0), min(end - position, len(piece))
            if high > low:
                parts.append(piece[low:high])
            position += len(piece)
        window = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        self.copied += len(window)
        return window

    def _drop_before(self, index: int) -> None:
        while self.pieces and self.offset + len(self.pieces[0]) <= index:
            self.offset += len(self.pieces.popleft())


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
        self.buffer = StreamBuffer(self.windows)
        self.units, self.previous = [], engine.units.blank

    @property
    def text(self) -> str:
        return self.engine.units.text(self.units)

    @property
    def seconds(self) -> float:
        return self.buffer.total / SAMPLE_RATE

    def feed(self, samples: np.ndarray) -> str:
        """Append 16 kHz mono samples; return the text that became final with the chunks completed now."""
        self.buffer.append(np.asarray(samples, dtype=np.float32))
        before = len(self.units)
        for window, first in self.buffer.ready():
            self._decode_chunk(window, first)
        return self.engine.units.text(self.units[before:]) if len(self.units) > before else ""

    def finish(self) -> str:
        """Decode what is left of the last chunk; the whole transcript."""
        rest = self.buffer.rest()
        if rest is not None:
            self._decode_chunk(*rest)
        return self.text

    def _decode_chunk(self, window: np.ndarray, first: int) -> None:
        logprobs = self.engine.window_logprobs(window)
        own = logprobs[first : first + self.windows.chunk_frames]
        last_frames = max(1, round((len(window) / SAMPLE_RATE) / ENCODER_FRAME_S) - first)
        for unit in own[:last_frames].argmax(-1):
            if unit != self.previous and unit != self.engine.units.blank:
                self.units.append(int(unit))
            self.previous = int(unit)

