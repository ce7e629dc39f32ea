"""``k2d validate``: keep only the pseudo-labelled chunks that a second model agrees with.

The validator re-transcribes every chunk on its own; the distance δ between the teacher's text
and the validator's decides. Rules (K²D, Tseng et al. 2024): ``mer``; ``per`` (pinyin/phonemes:
homophones do not count); ``comp`` = max(h(teacher), min(1 − h(validator), per)), where h is the
repeated-n-gram hallucination flag — a looping teacher is always dropped, a looping validator
never vetoes; ``ngram`` = h(teacher) alone; ``none`` keeps everything. Keep a chunk if δ ≤ α.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from tqdm import tqdm

from k2d.audio import SAMPLE_RATE, decode_audio
from k2d.manifest import read_manifest, write_manifest
from k2d_train.decoding import generate_texts
from k2d_train.phonemes import per
from k2d_train.stages.s7_evaluate import EvaluateOptions, load_whisper
from k2d_train.text import mer, repeated_ngram

RULES = ("none", "ngram", "mer", "per", "comp")


@dataclass
class ValidateOptions:
    rule: str = "comp"
    alpha: float = 0.4
    ngram_n: int = 3
    ngram_count: int = 3
    beam_size: int = 1
    batch_size: int = 8
    device: str = "cpu"
    compute_type: str = "int8"


def distances(teacher: str, validator: str, n: int = 3, count: int = 3) -> dict[str, float]:
    """δ of every rule for one chunk (teacher text is the reference)."""
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


def _chunk_audio(rows, manifest: Path) -> Callable[[int], object]:
    cache: dict[Path, object] = {}

    def load(i: int):
        row = rows[i]
        path = row.path(manifest)
        if path not in cache:
            cache.clear()
            cache[path] = decode_audio(path)
        audio = cache[path]
        return audio[int(row.extra["start"] * SAMPLE_RATE) : int(row.extra["end"] * SAMPLE_RATE)]

    return load


def validate(validator: str, chunks: Path, out: Path, options: ValidateOptions, store: Path) -> dict[str, dict]:
    """Write ``validated.jsonl`` (every chunk with all δ) and ``kept.jsonl`` (the chosen rule)."""
    if options.rule not in RULES:
        raise ValueError(f"unknown rule {options.rule!r}; choose one of {', '.join(RULES)}")
    rows = list(read_manifest(chunks))
    whisper = load_whisper(validator, EvaluateOptions(device=options.device, compute_type=options.compute_type), store)
    load = _chunk_audio(rows, chunks)
    validated = []
    for begin in tqdm(range(0, len(rows), options.batch_size), desc=f"validate with {validator}", unit="batch"):
        batch = list(range(begin, min(begin + options.batch_size, len(rows))))
        language = rows[begin].extra.get("language")
        texts = generate_texts(whisper, [load(i) for i in batch], language, options.beam_size, len(batch))
        for i, (text,) in zip(batch, texts, strict=True):
            row = rows[i]
            delta = distances(row.extra["teacher_text"], text, options.ngram_n, options.ngram_count)
            row.extra.update(validator_text=text, delta=delta)
            validated.append({"audio": row.audio, **row.extra})
    out.mkdir(parents=True, exist_ok=True)
    for row in validated:
        row["audio"] = _rebase(row["audio"], chunks.parent, out)
    write_manifest(out / "validated.jsonl", validated)
    kept = [row for row in validated if row["delta"][options.rule] <= options.alpha]
    write_manifest(out / "kept.jsonl", kept)
    return summary(validated, options.alpha)


def _rebase(audio: str, old: Path, new: Path) -> str:
    import os

    return os.path.relpath((old / audio).resolve(), new.resolve())


def summary(validated: list[dict], alpha: float) -> dict[str, dict]:
    total_s = sum(r["end"] - r["start"] for r in validated) or 1.0
    out = {}
    for rule in RULES:
        kept = [r for r in validated if r["delta"][rule] <= alpha]
        seconds = sum(r["end"] - r["start"] for r in kept)
        out[rule] = {"chunks": len(kept), "hours": seconds / 3600, "percent": 100 * seconds / total_s}
    return out


def summary_table(stats: dict[str, dict], total_chunks: int, alpha: float) -> Table:
    table = Table("rule", "chunks kept", "hours kept", "% of audio kept", title=f"kept per rule (α = {alpha})")
    for rule, row in stats.items():
        table.add_row(rule, f"{row['chunks']}/{total_chunks}", f"{row['hours']:.3f}", f"{row['percent']:.1f}")
    return table
