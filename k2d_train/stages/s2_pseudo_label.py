"""``k2d pseudo-label``: the teacher transcribes unlabelled long-form audio into ≤ 30 s chunks.

Fast path: CTranslate2 through faster-whisper's batched pipeline (VAD-cut windows decoded in
batches). Every chunk keeps the teacher's own segments — times, text and token ids — so the
student learns exactly what the teacher emitted, not a re-tokenisation of stripped text. Each
audio file's chunks are written to their own JSONL as soon as the file is done, so an
interrupted run resumes where it stopped. ``nbest > 1`` adds N beam hypotheses per chunk for
sequence-level KD (Mun'im et al., 2019).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from k2d.audio import SAMPLE_RATE, decode_audio
from k2d.manifest import read_manifest, write_manifest
from k2d_train.labels.chunking import Segment, merge_segments
from k2d_train.labels.decoding import generate_texts
from k2d_train.pipeline.options import PseudoLabelOptions
from k2d_train.pipeline.sharding import Processes, ShardMarkers, fingerprint, load_whisper_here, merge_order, wait_for_files

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".webm", ".mp4"}


def list_audio(source: Path) -> list[tuple[str, Path]]:
    """(id, path) for a folder of audio files or a JSONL manifest; ids are unique and stable."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        return [(str(p.relative_to(source).with_suffix("")).replace("/", "__"), p) for p in files]
    rows = list(read_manifest(source))
    return [(Path(row.audio).with_suffix("").as_posix().replace("/", "__"), row.path(source)) for row in rows]


class Teacher:
    """The teacher model behind the pseudo-labeller: long-form transcription and N-best."""

    def __init__(self, model: str, options: PseudoLabelOptions, store: Path, processes: Processes | None = None):
        """``processes``: under ``accelerate launch``, each process loads onto the GPU of its local rank."""
        from faster_whisper import BatchedInferencePipeline

        self.options = options
        self.whisper = load_whisper_here(model, store, options.device, options.compute_type, options.cpu_threads,
                                         processes)
        self.pipeline = BatchedInferencePipeline(self.whisper)
        self.timestamp_begin = self.whisper.hf_tokenizer.token_to_id("<|notimestamps|>") + 1

    def segments(self, audio: np.ndarray) -> tuple[list[Segment], str]:
        segments, info = self.pipeline.transcribe(
            audio, language=self.options.language, beam_size=self.options.beam_size,
            batch_size=self.options.batch_size, without_timestamps=False, temperature=0.0,
            condition_on_previous_text=False,
        )
        kept = [Segment(s.start, s.end, s.text, [t for t in s.tokens if t < self.timestamp_begin]) for s in segments]
        return kept, info.language

    def nbest(self, audio: np.ndarray, language: str) -> list[str]:
        """N beam hypotheses of one chunk, with timestamp tokens, best first."""
        return generate_texts(self.whisper, [audio], language, beam_size=self.options.beam_size,
                              timestamps=True, num_hypotheses=self.options.nbest)[0]


def _label_file(teacher: Teacher, audio_id: str, path: Path, out_dir: Path) -> float:
    """Write the chunks of one file; return its duration. ``audio`` is relative to ``chunks.jsonl``."""
    audio = decode_audio(path)
    segments, language = teacher.segments(audio)
    opts = teacher.options
    chunks, too_long = merge_segments(segments, opts.max_chunk_s, opts.min_chunk_s, seed=hash_seed(opts.seed, audio_id),
                                      edge_s=opts.edge_s, audio_s=len(audio) / SAMPLE_RATE)
    if too_long:
        tqdm.write(f"{audio_id}: {too_long} segment(s) longer than {opts.max_chunk_s:.0f} s left out (never clipped)")
    rows = []
    for index, chunk in enumerate(chunks):
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
            "segments": [segment.to_json() for segment in chunk.segments],
        }
        if teacher.options.nbest > 1:
            piece = audio[int(chunk.start * SAMPLE_RATE) : int(chunk.end * SAMPLE_RATE)]
            row["nbest"] = teacher.nbest(piece, language)
        rows.append(row)
    write_manifest(out_dir / f"{audio_id}.jsonl", rows)
    return len(audio) / SAMPLE_RATE


def is_dataset(source: str | Path) -> bool:
    """A Hugging Face dataset (saved folder, Parquet, hub id) rather than audio files or a manifest."""
    path = Path(source)
    if path.is_dir():
        return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
    return path.suffix == ".parquet" or "*" in str(source) or (not path.exists() and "/" in str(source))


def _sources(source: str | Path, out: Path, options: PseudoLabelOptions) -> Iterator[tuple[str, Path]]:
    if is_dataset(source):
        from k2d_train.labels.datasets_input import materialise

        yield from materialise(str(source), out / "audio", options.dataset_split, options.audio_column)
        return
    files = list_audio(Path(source))
    if not files:
        raise FileNotFoundError(f"{source}: no audio files")
    yield from files


def pseudo_label(model: str, source: str | Path, out: Path, options: PseudoLabelOptions, store: Path) -> dict:
    """Label every file not labelled yet; merge all per-file results into ``out/chunks.jsonl``.

    ``source``: a folder of audio files, a JSONL manifest, or a Hugging Face dataset (streamed).
    Under ``accelerate launch`` with N processes, file i of the sorted list is labelled by process
    i % N and the main process merges every file's chunks in list order, so ``chunks.jsonl`` is
    the one a single process writes (``k2d_train/pipeline/sharding.py`` says why it is built this way)."""
    processes = Processes.current()
    if processes.distributed:
        return _pseudo_label_sharded(model, source, out, options, store, processes)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    seen: list[str] = []
    labelled_now, audio_s, _ = _label_files(model, enumerate(_sources(source, out, options)), parts, options, store,
                                            seen)
    chunks = _merge(parts, seen, out)
    hours = sum(c["end"] - c["start"] for c in chunks) / 3600
    return {"files": len(seen), "labelled_now": labelled_now, "chunks": len(chunks), "hours": hours}


def _label_files(model: str, items: Iterable[tuple[int, tuple[str, Path]]], parts: Path, options: PseudoLabelOptions,
                 store: Path, seen: list[str], processes: Processes | None = None) -> tuple[int, float, float]:
    """Label each item whose part is missing (the teacher loads on the first one); return (files
    labelled now, their audio seconds, labelling seconds). ``seen`` collects every id, done or not."""
    processes = processes or Processes()
    teacher: Teacher | None = None
    labelled_now, audio_s, start = 0, 0.0, time.perf_counter()
    with tqdm(desc="pseudo-label" + processes.tag(), unit="file", position=processes.index) as progress:
        for _, (audio_id, path) in items:
            seen.append(audio_id)
            progress.update(1)
            if (parts / f"{audio_id}.jsonl").exists():
                continue
            teacher = teacher or Teacher(model, options, store, processes)
            audio_s += _label_file(teacher, audio_id, path, parts)
            labelled_now += 1
            progress.set_postfix(rtfx=f"{audio_s / (time.perf_counter() - start):.1f}", new=labelled_now)
    return labelled_now, audio_s, time.perf_counter() - start


def seed_parts(chunks: Path, out: Path, listing: list[tuple[str, Path]]) -> int:
    """Take another run's labels (its ``chunks.jsonl``) of the files this run lists, as per-file parts not made yet;
    return how many files were taken. Labels are a function of the teacher, its options and the audio alone, so a
    larger prefix of a corpus need not decode again what a smaller one did (the caller checks the options match).
    A file counts as the same only at the same resolved path; a file that run cut into no chunk is decoded again."""
    wanted = {audio_id: path.resolve() for audio_id, path in listing}
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    here = out.resolve()
    takes: dict[str, str | None] = {}  # audio id -> its file's path from ``out`` if taken (worked out once per file)
    found: dict[str, list[dict]] = {}
    for row in read_manifest(chunks):
        audio_id = str(row.extra["id"]).rsplit("-", 1)[0]
        if audio_id not in takes:
            audio = row.path(chunks).resolve()
            made = (parts / f"{audio_id}.jsonl").exists()
            takes[audio_id] = os.path.relpath(audio, here) if wanted.get(audio_id) == audio and not made else None
        if takes[audio_id] is not None:
            found.setdefault(audio_id, []).append({**row.to_json(), "audio": takes[audio_id]})
    for audio_id, rows in found.items():
        write_manifest(parts / f"{audio_id}.jsonl", rows)
    return len(found)


def _merge(parts: Path, ids: list[str], out: Path) -> list[dict]:
    chunks = [row for audio_id in ids for row in _read_part(parts / f"{audio_id}.jsonl")]
    write_manifest(out / "chunks.jsonl", chunks)
    return chunks


def _listing(source: str | Path, out: Path, options: PseudoLabelOptions, processes: Processes) -> list[tuple[str, Path]]:
    """The full ordered corpus, the same in every process. Files and manifests: each process lists
    them itself (sorted). A dataset is streamed once, by the main process, which writes every
    example's audio (I/O only) and the listing; the others wait for the listing."""
    if not is_dataset(source):
        return list(_sources(source, out, options))
    listing = out / "shards" / "listing.json"
    if processes.is_main:
        items = [(audio_id, str(path)) for audio_id, path in _sources(source, out, options)]
        tmp = listing.with_name(".listing.json.tmp")
        tmp.write_text(json.dumps(items) + "\n")
        tmp.replace(listing)
    else:
        wait_for_files([listing])
    return [(audio_id, Path(path)) for audio_id, path in json.loads(listing.read_text())]


def _pseudo_label_sharded(model: str, source: str | Path, out: Path, options: PseudoLabelOptions, store: Path,
                          processes: Processes) -> dict:
    """This process's shard, then (main process) the merge in single-process order."""
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    markers = ShardMarkers(out / "shards", processes)
    if processes.is_main:
        (out / "shards" / "listing.json").unlink(missing_ok=True)
    markers.reset()
    listing = _listing(source, out, options, processes)
    ids = [audio_id for audio_id, _ in listing]
    mine = processes.mine(listing)
    seen: list[str] = []
    labelled_now, audio_s, seconds = _label_files(model, mine, parts, options, store, seen, processes)
    shard = {"index": processes.index, "count": processes.count, "fingerprint": fingerprint(ids),
             "items": [[position, audio_id] for position, (audio_id, _) in mine], "labelled_now": labelled_now,
             "audio_s": round(audio_s, 3), "seconds": round(seconds, 3),
             "rtfx": round(audio_s / seconds, 2) if audio_s and seconds else None}
    markers.write(shard)
    shards = markers.wait_all()
    result = {"process": processes.index, "processes": processes.count, "files": len(mine),
              "labelled_now": labelled_now}
    if processes.is_main:
        chunks = _merge(parts, merge_order(shards, ids), out)
        result = {"files": len(ids), "labelled_now": sum(s["labelled_now"] for s in shards), "chunks": len(chunks),
                  "hours": sum(c["end"] - c["start"] for c in chunks) / 3600, "processes": processes.count,
                  "shards": [{k: s[k] for k in ("index", "labelled_now", "audio_s", "seconds", "rtfx")} | {
                      "files": len(s["items"])} for s in shards]}
    processes.barrier()  # nobody returns before chunks.jsonl is complete
    return result


def hash_seed(seed: int, key: str) -> int:
    """A per-file seed that does not depend on the order files are processed in (resume-safe)."""
    import zlib

    return seed * 1_000_003 + zlib.crc32(key.encode())


def _read_part(path: Path) -> list[dict]:
    return [{"audio": row.audio, **row.extra} for row in read_manifest(path)]
