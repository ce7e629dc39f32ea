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
from pathlib import Path

from rich.table import Table
from tqdm import tqdm

from k2d.manifest import read_manifest, write_manifest
from k2d.scoring import mer, repeated_ngram, strip_timestamps, units, unmatched_share
from k2d.textunits import is_han
from k2d_train.labels.chunking import Chunk, Segment
from k2d_train.labels.decoding import generate_texts
from k2d_train.labels.phonemes import per, phonemes
from k2d_train.pipeline.options import ValidateOptions
from k2d_train.pipeline.sharding import Processes, ShardMarkers, fingerprint, load_whisper_here
from k2d_train.store.loading import load_whisper
from k2d_train.training.encoder_states import ClipReader

RULES = ("none", "ngram", "mer", "per", "comp")
def distances(teacher: str, validator: str | None, n: int = 3, count: int = 3,
              english_only: bool = False) -> dict[str, float]:
    """δ of every rule for one segment (teacher text is the reference); without a validator transcript,
    only the teacher-only rules.

    ``english_only``: the validator is an English-only model (tiny.en) and votes on the teacher's English
    words alone — δ is the share of them (or of their phonemes) the validator did not also say, in order;
    whatever it made of the Mandarin around them does not count. A segment without English gets no vote
    (δ 0), so ``comp`` falls back to the teacher's own loop flag there."""
    h_teacher = float(repeated_ngram(teacher, n, count))
    if validator is None:
        return {"none": 0.0, "ngram": h_teacher}
    h_validator = float(repeated_ngram(validator, n, count))
    if english_only:
        said = [u for u in units(teacher) if not is_han(u)]
        heard = [u for u in units(validator) if not is_han(u)]
        word_distance = unmatched_share(said, heard)
        phoneme_distance = unmatched_share(phonemes(" ".join(said)), phonemes(" ".join(heard)))
    else:
        word_distance, phoneme_distance = mer(teacher, validator), per(teacher, validator)
    return {
        "none": 0.0,
        "ngram": h_teacher,
        "mer": word_distance,
        "per": phoneme_distance,
        "comp": max(h_teacher, min(1.0 - h_validator, phoneme_distance)),
    }


def _segments(row: dict) -> list[dict]:
    """A chunk's segments; chunk files without them count as one segment."""
    return row.get("segments") or [{"start": row["start"], "end": row["end"], "text": row["teacher_text"], "tokens": []}]


def validate(validator: str, chunks: Path, out: Path, options: ValidateOptions, store: Path) -> dict[str, dict]:
    """Write ``validated.jsonl`` (every chunk, δ per segment), ``kept.jsonl`` (training chunks of the
    chosen rule) and ``dropped.md``; return the share of audio each rule keeps.

    Under ``accelerate launch`` with N processes, batch b of the single-process schedule is decoded by
    process b % N — whole batches, so every segment is decoded in the same company as by one process
    and the outputs are the same — and the main process writes the files."""
    if options.rule not in RULES:
        raise ValueError(f"unknown rule {options.rule!r}; choose one of {', '.join(RULES)}")
    processes = Processes.current()
    markers = ShardMarkers(out / "shards", processes)
    if processes.distributed:
        markers.reset()
    rows = [{"audio": r.audio, **r.extra, "_path": r.path(chunks)} for r in read_manifest(chunks)]
    needs_validator = options.needs_validator
    whisper = None
    if needs_validator:
        whisper = load_whisper_here(validator, store, options.device, options.compute_type, processes=processes) \
            if processes.distributed else load_whisper(validator, store, options.device, options.compute_type)
    jobs = [(row, segment) for row in rows for segment in _segments(row)]
    # similar lengths share a batch (the budget follows the longest); file order is kept inside a length class
    jobs.sort(key=lambda job: int(job[1]["end"] - job[1]["start"]) // 3)
    batches = [jobs[begin : begin + options.batch_size] for begin in range(0, len(jobs), options.batch_size)] \
        if needs_validator else []
    reader = ClipReader()
    texts: dict[int, list[str]] = {}
    for number, batch in tqdm(processes.mine(batches), desc=f"validate segments with {validator}{processes.tag()}",
                              unit="batch", position=processes.index):
        clips = [reader.clip(row["_path"], max(row["start"], seg["start"] - options.edge_s),
                             min(row["end"], seg["end"] + options.edge_s)) for row, seg in batch]
        texts[number] = [text for (text,) in generate_texts(whisper, clips, batch[0][0].get("language"),
                                                            options.beam_size, len(batch))]
    if processes.distributed:
        texts = _gather_texts(markers, texts, [f"{row['id']}@{seg['start']}" for row, seg in jobs], len(batches))
    english_only = whisper is not None and not whisper.model.is_multilingual
    for number, batch in enumerate(batches):
        for (_, segment), text in zip(batch, texts[number], strict=True):
            segment.update(validator_text=text, delta=distances(segment["text"], text, options.ngram_n,
                                                                options.ngram_count, english_only))
    if not needs_validator:
        for _, segment in jobs:
            segment.update(delta=distances(segment["text"], None, options.ngram_n, options.ngram_count))
    validated = []
    for row in rows:
        row["segments"] = _segments(row)
        row.pop("_path")
        row["audio"] = os.path.relpath((chunks.parent / row["audio"]).resolve(), out.resolve())
        validated.append(row)
    if processes.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_manifest(out / "validated.jsonl", validated)
        write_manifest(out / "kept.jsonl", kept_chunks(validated, options.rule, options.alpha,
                                                       ngram_n=options.ngram_n, ngram_count=options.ngram_count))
        write_dropped(out / "dropped.md", validated, options.rule, options.alpha)
    processes.barrier()  # nobody returns before the files are complete
    return summary(validated, options.alpha)


def _gather_texts(markers: ShardMarkers, texts: dict[int, list[str]], job_keys: list[str], batches: int) -> dict[int, list[str]]:
    """Every process's validator texts, by batch number; refuses shards of a different job list."""
    markers.write({"index": markers.processes.index, "fingerprint": fingerprint(job_keys),
                   "items": [[number, batch_texts] for number, batch_texts in sorted(texts.items())]})
    merged: dict[int, list[str]] = {}
    for shard in markers.wait_all():
        if shard["fingerprint"] != fingerprint(job_keys):
            raise RuntimeError(f"process {shard['index']} validated a different chunk list")
        merged.update((number, batch_texts) for number, batch_texts in shard["items"])
    if sorted(merged) != list(range(batches)):
        raise RuntimeError(f"shards cover {len(merged)} batch(es) of {batches}")
    return merged


def kept_chunks(validated: list[dict], rule: str, alpha: float, edge_s: float = 0.2, ngram_n: int = 3,
                ngram_count: int = 3) -> list[dict]:
    """Training chunks of one rule: each run of consecutive kept segments of a chunk, with a margin.

    A chunk's N-best hypotheses (sequence-level KD) describe the *whole* chunk: they go only with a chunk
    kept whole, and each must pass the teacher's own loop flag. A sub-run gets none — its audio is shorter
    than every hypothesis, which would still carry the segments the rule dropped."""
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
            kept = {**{k: v for k, v in row.items() if k not in ("segments", "teacher_text", "teacher_label", "nbest")},
                    "id": row["id"] if whole else f"{row['id']}-r{index}", "start": round(start, 3),
                    "end": round(end, 3), "teacher_text": chunk.text, "teacher_label": chunk.label(),
                    "segments": [s.to_json() for s in chunk.segments]}
            if whole and row.get("nbest"):
                kept["nbest"] = [h for h in row["nbest"]
                                 if not repeated_ngram(strip_timestamps(h), ngram_n, ngram_count)]
            out.append(kept)
    return out


def summary(validated: list[dict], alpha: float) -> dict[str, dict]:
    """What each rule keeps, in two hours that differ by design: ``speech_hours`` sums the kept segments (what the
    validator judged), ``chunk_hours`` the training chunks made of them (what training reads, pauses and margins
    included — the figure ``k2d curve`` puts on its axis; 17.0 h of chunks held 16.3 h of speech at 20 h)."""
    segments = [s for row in validated for s in row["segments"]]
    total_s = sum(s["end"] - s["start"] for s in segments) or 1.0
    out = {}
    for rule in (r for r in RULES if all(r in s["delta"] for s in segments)):  # the rules that were measured
        kept = [s for s in segments if s["delta"][rule] <= alpha]
        seconds = sum(s["end"] - s["start"] for s in kept)
        chunks = kept_chunks(validated, rule, alpha)
        out[rule] = {"segments": len(kept), "chunks": len(chunks), "speech_hours": seconds / 3600,
                     "chunk_hours": sum(c["end"] - c["start"] for c in chunks) / 3600,
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
    table = Table("rule", "segments kept", "training chunks", "speech h kept", "chunk h (trained on)",
                  "% of speech kept", title=f"kept per rule (α = {alpha})")
    total = stats.get("total_segments", 0)
    for rule in (r for r in RULES if r in stats):
        row = stats[rule]
        table.add_row(rule, f"{row['segments']}/{total}", str(row["chunks"]), f"{row['speech_hours']:.3f}",
                      f"{row['chunk_hours']:.3f}", f"{row['percent']:.1f}")
    return table
