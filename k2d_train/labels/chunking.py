"""Greedy merging of the teacher's timestamped segments into training chunks of ≤ 30 s.

Whisper sees at most 30 s, so a training example must fit one window; merging consecutive
segments (rather than cutting at fixed 30 s marks) keeps words whole and gives the label real
timestamp tokens relative to the chunk's start, which is what the student learns to emit. Chunk
lengths vary (each chunk draws its own limit) because the server's windows vary too, and a
short-context student must learn every length. Chunk edges get a small margin so the first and
last phonemes are not clipped where the teacher's timestamps are a little tight.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

TIMESTAMP_STEP = 0.02
MAX_CHUNK_S = 30.0


@dataclass
class Segment:
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)  # the teacher's own ids, timestamps excluded

    def to_json(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text, "tokens": self.tokens}


@dataclass
class Chunk:
    start: float
    end: float
    segments: list[Segment] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    def label(self) -> str:
        """Text with Whisper timestamp tokens relative to the chunk start: ``<|0.00|> hi<|1.20|>``."""
        return "".join(
            f"{timestamp(s.start - self.start)}{s.text.strip()}{timestamp(s.end - self.start)}"
            for s in self.segments
            if s.text.strip()
        )


def timestamp(seconds: float) -> str:
    return f"<|{timestamp_steps(seconds) * TIMESTAMP_STEP:.2f}|>"


def timestamp_steps(seconds: float) -> int:
    """Index of the nearest timestamp token (0.02 s steps, 0–30 s)."""
    return round(max(0.0, min(seconds, MAX_CHUNK_S)) / TIMESTAMP_STEP)


def merge_segments(segments: list[Segment], max_chunk_s: float = MAX_CHUNK_S, min_chunk_s: float | None = None,
                   seed: int = 0, edge_s: float = 0.0, audio_s: float | None = None) -> tuple[list[Chunk], int]:
    """Greedily append each segment to the current chunk while the chunk stays within its limit.

    Each chunk's limit is drawn from [``min_chunk_s``, ``max_chunk_s``] (fixed when ``min_chunk_s`` is
    None). A segment longer than ``max_chunk_s`` cannot be seen whole by Whisper: it is dropped
    (counted in the second return value) rather than clipped, since clipped audio under the full
    text would teach the student to invent words. Chunks then get ``edge_s`` of margin on each side,
    never reaching into a neighbouring chunk.
    """
    rng = random.Random(seed)
    draw = (lambda: max_chunk_s) if min_chunk_s is None else (lambda: rng.uniform(min_chunk_s, max_chunk_s))
    chunks: list[Chunk] = []
    limit, dropped = draw(), 0
    budget = max_chunk_s - 2 * edge_s
    for segment in sorted(segments, key=lambda s: s.start):
        if segment.end <= segment.start:
            continue
        if segment.end - segment.start > budget:
            dropped += 1
            continue
        current = chunks[-1] if chunks else None
        if current is not None and segment.end - current.start <= min(limit, budget):
            current.segments.append(segment)
            current.end = segment.end
            continue
        chunks.append(Chunk(segment.start, segment.end, [segment]))
        limit = draw()
    _add_margins(chunks, edge_s, audio_s)
    return chunks, dropped


def _add_margins(chunks: list[Chunk], edge_s: float, audio_s: float | None) -> None:
    for i, chunk in enumerate(chunks):
        low = chunks[i - 1].segments[-1].end if i else 0.0
        high = chunks[i + 1].segments[0].start if i + 1 < len(chunks) else (audio_s if audio_s is not None else 1e9)
        chunk.start = max(low, chunk.start - edge_s, 0.0)
        chunk.end = min(high, chunk.end + edge_s)
