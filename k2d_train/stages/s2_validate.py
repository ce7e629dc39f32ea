"""``k2d validate``: keep only the pseudo-labelled segments that a second model agrees with.

The validator re-transcribes every *segment* of every chunk on its own (not the whole chunk: a
validator that stops early on a 30 s chunk would otherwise veto the good segments after its own
failure); the distance δ between the teacher's text and the validator's decides. Rules (K²D,
Tseng et al. 2024): ``mer``; ``per`` (pinyin/phonemes: homophones do not count); ``comp`` =
max(h(teacher), min(1 − h(validator), per)), where h is the repeated-n-gram hallucination flag —
a looping teacher is always dropped, a looping validator never vetoes; ``ngram`` = h(teacher)
alone; ``none`` keeps everything. A segment is kept if δ ≤ α; consecutive kept segments of a chunk
form the training chunks. ``dropped.md`` lists every dropped segment with both transcripts so a
person can audit the rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from tqdm import tqdm

from k2d.manifest import read_manifest, write_manifest
from k2d.scoring import mer, repeated_ngram
from k2d_train.chunking import Chunk, Segment
from k2d_train.decoding import generate_texts
from k2d_train.encoder_states import ClipReader
from k2d_train.phonemes import per
from k2d_train.store.loading import load_whisper

RULES = ("none", "ngram", "mer", "per", "comp")


@dataclass
class ValidateOptions:
    rule: str = "comp"
    alpha: float = 0.4
    ngram_n: int = 3
    ngram_count: int = 3
    beam_size: int = 1
    batch_size: int = 8
    edge_s: float = 0.15  # margin around each segment for the validator
    device: str = "cpu"
    compute_type: str = "int8"


def distances(teacher: str, validator: str, n: int = 3, count: int = 3) -> dict[str, float]:
    """δ of every rule for one segment (teacher text is the reference)."""
    h_teacher = float(repeated_ngram(teacher, n, count))
    h_validator = float(repeated_ngram(validator, n, count))
    phoneme_distance = per(teacher, validator)
    return {
        "none": 0.0,
        "ngram": h_teacher,
        "mer": mer(teacher, validator),
        "per": phoneme_distance,
        "comp": max(h_teacher, min(1.0 - h_validator, phoneme_distance)),
    }


def _segments(row: dict) -> list[dict]:
    """A chunk's segments; chunk files without them count as one segment."""
    return row.get("segments") or [{"start": row["start"], "end": row["end"], "text": row["teacher_text"], "tokens": []}]


def validate(validator: str, chunks: Path, out: Path, options: ValidateOptions, store: Path) -> dict[str, dict]:
    """Write ``validated.jsonl`` (every chunk, δ per segment), ``kept.jsonl`` (training chunks of the
    chosen rule) and ``dropped.md``; return the share of audio each rule keeps."""
    if options.rule not in RULES:
        raise ValueError(f"unknown rule {options.rule!r}; choose one of {', '.join(RULES)}")
    rows = [{"audio": r.audio, **r.extra, "_path": r.path(chunks)} for r in read_manifest(chunks)]
    whisper = load_whisper(validator, store, options.device, options.compute_type)
    jobs = [(row, segment) for row in rows for segment in _segments(row)]
    # similar lengths share a batch (the budget follows the longest); file order is kept inside a length class
    jobs.sort(key=lambda job: int(job[1]["end"] - job[1]["start"]) // 3)
    reader = ClipReader()
    for begin in tqdm(range(0, len(jobs), options.batch_size), desc=f"validate segments with {validator}", unit="batch"):
        batch = jobs[begin : begin + options.batch_size]
        clips = [reader.clip(row["_path"], max(row["start"], seg["start"] - options.edge_s),
                             min(row["end"], seg["end"] + options.edge_s)) for row, seg in batch]
        texts = generate_texts(whisper, clips, batch[0][0].get("language"), options.beam_size, len(batch))
        for (_, segment), (text,) in zip(batch, texts, strict=True):
            segment.update(validator_text=text, delta=distances(segment["text"], text, options.ngram_n,
                                                                options.ngram_count))
    out.mkdir(parents=True, exist_ok=True)
    validated = []
    for row in rows:
        row["segments"] = _segments(row)
        row.pop("_path")
        row["audio"] = os.path.relpath((chunks.parent / row["audio"]).resolve(), out.resolve())
        validated.append(row)
    write_manifest(out / "validated.jsonl", validated)
    write_manifest(out / "kept.jsonl", kept_chunks(validated, options.rule, options.alpha))
    write_dropped(out / "dropped.md", validated, options.rule, options.alpha)
    return summary(validated, options.alpha)


def kept_chunks(validated: list[dict], rule: str, alpha: float, edge_s: float = 0.2) -> list[dict]:
    """Training chunks of one rule: each run of consecutive kept segments of a chunk, with a margin."""
    out = []
    for row in validated:
        runs: list[list[dict]] = [[]]
        for segment in row["segments"]:
            if segment["delta"][rule] <= alpha:
                runs[-1].append(segment)
            elif runs[-1]:
                runs.append([])
        for index, run in enumerate(r for r in runs if r):
            start = max(row["start"], run[0]["start"] - edge_s)
            end = min(row["end"], run[-1]["end"] + edge_s)
            chunk = Chunk(start, end, [Segment(s["start"], s["end"], s["text"], s.get("tokens", [])) for s in run])
            whole = len(run) == len(row["segments"])
            out.append({**{k: v for k, v in row.items() if k not in ("segments", "teacher_text", "teacher_label")},
                        "id": row["id"] if whole else f"{row['id']}-r{index}", "start": round(start, 3),
                        "end": round(end, 3), "teacher_text": chunk.text, "teacher_label": chunk.label(),
                        "segments": [s.to_json() for s in chunk.segments]})
    return out


def summary(validated: list[dict], alpha: float) -> dict[str, dict]:
    segments = [s for row in validated for s in row["segments"]]
    total_s = sum(s["end"] - s["start"] for s in segments) or 1.0
    out = {}
    for rule in RULES:
        kept = [s for s in segments if s["delta"][rule] <= alpha]
        seconds = sum(s["end"] - s["start"] for s in kept)
        out[rule] = {"segments": len(kept), "chunks": len(kept_chunks(validated, rule, alpha)), "hours": seconds / 3600,
                     "percent": 100 * seconds / total_s}
    out["total_segments"] = len(segments)
    return out


def write_dropped(path: Path, validated: list[dict], rule: str, alpha: float) -> None:
    """The audit table: every dropped segment, where it is, both transcripts and its δ."""
    lines = [f"# Segments dropped by rule `{rule}` (α = {alpha})", "",
             "| chunk | start–end s | δ | teacher | validator |", "|---|---|---|---|---|"]
    for row in validated:
        for s in row["segments"]:
            if s["delta"][rule] > alpha:
                cells = [row["id"], f"{s['start']:.2f}–{s['end']:.2f}", f"{s['delta'][rule]:.2f}",
                         s["text"].strip(), s.get("validator_text", "").strip()]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def summary_table(stats: dict[str, dict], alpha: float) -> Table:
    table = Table("rule", "segments kept", "training chunks", "hours kept", "% of audio kept",
                  title=f"kept per rule (α = {alpha})")
    total = stats.get("total_segments", 0)
    for rule in RULES:
        row = stats[rule]
        table.add_row(rule, f"{row['segments']}/{total}", str(row["chunks"]), f"{row['hours']:.3f}", f"{row['percent']:.1f}")
    return table
