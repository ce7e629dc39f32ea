"""Greedy merging of the teacher's timestamped segments into training chunks of ≤ 30 s.

Whisper sees 30 s windows, so a training example must fit one; merging consecutive segments
(rather than cutting at fixed 30 s marks) keeps words whole and gives the label real timestamp
tokens relative to the chunk's start, which is what the student learns to emit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TIMESTAMP_STEP = 0.02
MAX_CHUNK_S = 30.0


@dataclass
class Segment:
    start: float
    end: float
    text: str


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
    steps = round(max(0.0, min(seconds, MAX_CHUNK_S)) / TIMESTAMP_STEP)
    return f"<|{steps * TIMESTAMP_STEP:.2f}|>"


def merge_segments(segments: list[Segment], max_chunk_s: float = MAX_CHUNK_S) -> list[Chunk]:
    """Greedily append each segment to the current chunk while the chunk stays ≤ ``max_chunk_s``.

    A single segment longer than the limit (a teacher glitch) becomes a chunk of its own, clipped
    to the limit, rather than being silently merged into a chunk Whisper could not see whole.
    """
    chunks: list[Chunk] = []
    current: Chunk | None = None
    for segment in sorted(segments, key=lambda s: s.start):
        if segment.end <= segment.start:
            continue
        if current is not None and segment.end - current.start <= max_chunk_s:
            current.segments.append(segment)
            current.end = segment.end
            continue
        if current is not None:
            chunks.append(current)
        end = min(segment.end, segment.start + max_chunk_s)
        current = Chunk(segment.start, end, [Segment(segment.start, end, segment.text)])
    if current is not None:
        chunks.append(current)
    return chunks
