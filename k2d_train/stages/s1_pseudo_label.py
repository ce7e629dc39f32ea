"""``k2d pseudo-label``: the teacher transcribes unlabelled long-form audio into ≤ 30 s chunks.

Fast path: CTranslate2 through faster-whisper's batched pipeline (VAD-cut windows decoded in
batches). Each audio file's chunks are written to their own JSONL as soon as the file is done,
so an interrupted run resumes where it stopped. ``nbest > 1`` adds N beam hypotheses per chunk
for sequence-level KD (Mun'im et al., 2019).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from k2d.audio import SAMPLE_RATE, decode_audio
from k2d.manifest import read_manifest, write_manifest
from k2d_train.chunking import Segment, merge_segments
from k2d_train.decoding import generate_texts
from k2d_train.stages.s7_evaluate import EvaluateOptions, load_whisper

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".webm", ".mp4"}


@dataclass
class PseudoLabelOptions:
    language: str | None = "zh"
    beam_size: int = 5
    batch_size: int = 8
    nbest: int = 1
    max_chunk_s: float = 30.0
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 0


def list_audio(source: Path) -> list[tuple[str, Path]]:
    """(id, path) for a folder of audio files or a JSONL manifest; ids are unique and stable."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        return [(str(p.relative_to(source).with_suffix("")).replace("/", "__"), p) for p in files]
    rows = list(read_manifest(source))
    return [(Path(row.audio).with_suffix("").as_posix().replace("/", "__"), row.path(source)) for row in rows]


class Teacher:
    """The teacher model behind the pseudo-labeller: long-form transcription and N-best."""

    def __init__(self, model: str, options: PseudoLabelOptions, store: Path):
        from faster_whisper import BatchedInferencePipeline

        self.options = options
        self.whisper = load_whisper(model, EvaluateOptions(device=options.device, compute_type=options.compute_type,
                                                           cpu_threads=options.cpu_threads), store)
        self.pipeline = BatchedInferencePipeline(self.whisper)

    def segments(self, audio: np.ndarray) -> tuple[list[Segment], str]:
        segments, info = self.pipeline.transcribe(
            audio, language=self.options.language, beam_size=self.options.beam_size,
            batch_size=self.options.batch_size, without_timestamps=False, temperature=0.0,
            condition_on_previous_text=False,
        )
        return [Segment(s.start, s.end, s.text) for s in segments], info.language

    def nbest(self, audio: np.ndarray, language: str) -> list[str]:
        """N beam hypotheses of one chunk, with timestamp tokens, best first."""
        return generate_texts(self.whisper, [audio], language, beam_size=self.options.beam_size,
                              timestamps=True, num_hypotheses=self.options.nbest)[0]


def _label_file(teacher: Teacher, audio_id: str, path: Path, out_dir: Path) -> float:
    """Write the chunks of one file; return its duration. ``audio`` is relative to ``chunks.jsonl``."""
    audio = decode_audio(path)
    segments, language = teacher.segments(audio)
    rows = []
    for index, chunk in enumerate(merge_segments(segments, teacher.options.max_chunk_s)):
        if not chunk.text:
            continue
        row = {
            "id": f"{audio_id}-{index:04d}",
            "audio": os.path.relpath(path.resolve(), out_dir.parent.resolve()),
            "start": round(chunk.start, 3),
            "end": round(chunk.end, 3),
            "language": language,
            "teacher_text": chunk.text,
            "teacher_label": chunk.label(),
        }
        if teacher.options.nbest > 1:
            piece = audio[int(chunk.start * SAMPLE_RATE) : int(chunk.end * SAMPLE_RATE)]
            row["nbest"] = teacher.nbest(piece, language)
        rows.append(row)
    write_manifest(out_dir / f"{audio_id}.jsonl", rows)
    return len(audio) / SAMPLE_RATE


def pseudo_label(model: str, source: Path, out: Path, options: PseudoLabelOptions, store: Path) -> dict:
    """Label every file not labelled yet; merge all per-file results into ``out/chunks.jsonl``."""
    files = list_audio(source)
    if not files:
        raise FileNotFoundError(f"{source}: no audio files")
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    todo = [(i, p) for i, p in files if not (parts / f"{i}.jsonl").exists()]
    teacher = Teacher(model, options, store) if todo else None
    audio_s, start = 0.0, time.perf_counter()
    with tqdm(todo, desc=f"pseudo-label ({len(files) - len(todo)} done before)", unit="file") as progress:
        for audio_id, path in progress:
            audio_s += _label_file(teacher, audio_id, path, parts)
            progress.set_postfix(rtfx=f"{audio_s / (time.perf_counter() - start):.1f}")
    chunks = [row for audio_id, _ in files for row in _read_part(parts / f"{audio_id}.jsonl")]
    write_manifest(out / "chunks.jsonl", chunks)
    hours = sum(c["end"] - c["start"] for c in chunks) / 3600
    return {"files": len(files), "labelled_now": len(todo), "chunks": len(chunks), "hours": hours}


def _read_part(path: Path) -> list[dict]:
    return [{"audio": row.audio, **row.extra} for row in read_manifest(path)]
