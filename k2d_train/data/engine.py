"""The data engine for hours of speech: the synthetic corpus from real text, item by item, over processes.

``SynthOptions(text="real")`` builds the same files as the template corpus (``lectures.jsonl``, the dev/test
sets, ``voices.json``, ``conditions.json``) differently, because hours do not fit the template path:

- every item (one lecture, one test utterance) is a pure function of (options, split, index): its text is a
  fixed block of its split's sentence sequence (``text_bank``), its speaker and condition come from its own
  seeded generator. So items can be made in any order, in any process, and skipped when already made;
- each item's audio is written atomically, then a JSON sidecar with its manifest row (written last: a sidecar
  means a finished item); a killed build resumes where it stopped;
- the items run over ``workers`` processes (spawned: ONNX Runtime sessions do not survive a fork), longest
  first, with a progress bar; the results do not depend on the number of workers;
- ``lecture_limit`` keeps only the first N lectures of a corpus of ``lectures`` (``engine_lecture_limit`` only the
  first N of one Mandarin engine's, e.g. fewer of the slow neural voices), and ``audio_store`` puts item
  audio in a folder shared by corpora that differ only in that: the 0.3 h and 1 h corpora of a learning curve
  are then prefixes of the 3 h one, made once. Held-out sets are made for the full corpus, so every size is
  scored on the same utterances. File names carry a digest of everything that decides the item, so a stale
  file is never taken for a new one;
- ``speed.json`` records seconds of audio per second of synthesis for each Mandarin voice engine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from k2d.atomic import atomic_write_text
from k2d.audio import SAMPLE_RATE, write_audio
from k2d.manifest import write_manifest
from k2d_train.data import synth
from k2d_train.data.synth import Pair, SynthOptions
from k2d_train.data.text_bank import TEXT_VERSION, text_bank
from k2d_train.data.voices import VoiceSpec, bopomofo_of, mandarin_reader

HELDOUT_KINDS = ("code_switched", "mandarin", "natural")  # the sets are decoded as zh: no English-only sentences
SECONDS_PER_SENTENCE = 1.5  # the least a sentence and its pause take: sizes a lecture's block of sentences
UTTERANCE_BLOCK = 12  # sentences reserved per test utterance (one to four are spoken; the rest are spares)
_NOT_IN_DIGEST = {"workers", "audio_store", "lecture_limit", "engine_lecture_limit", "ood_noisy", "ood_noisy_utterances"}
# options added after audio stores were made, at the value that means "as before": left out, so items keep their names
_DIGEST_AS_BEFORE = {"heldout_lectures": None}


@dataclass(frozen=True)
class Job:
    """One item to make: where it goes, who speaks, and the sentences it may use."""

    split: str
    index: int
    name: str  # relative to the audio store
    pairs: tuple[Pair, ...]  # lectures: the lecturer alone; sets: the speakers to draw from
    rotate: bool  # sets: pair = pairs[index % n] (equal voice groups) instead of the drawn one
    sentences: tuple[tuple[str, str, str], ...]  # (text, kind, source)
    seconds: float  # lectures: how long to speak

    @property
    def lecture(self) -> bool:
        return self.split == "lectures"


def digest(options: SynthOptions) -> str:
    """What decides an item's audio besides its split and index (not its corpus's size or where it is stored)."""
    registry = synth._stamp(SynthOptions())["voices"]
    chosen = {k: v for k, v in asdict(options).items()
              if k not in _NOT_IN_DIGEST and not (k in _DIGEST_AS_BEFORE and v == _DIGEST_AS_BEFORE[k])}
    payload = json.dumps([chosen, synth.CORPUS_VERSION, TEXT_VERSION, registry], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def cast(lectures: int, zh: list[VoiceSpec], en: list[VoiceSpec], share: dict[str, float], seed: int) -> list[Pair]:
    """Lecturers by engine share: lecture k's Mandarin engine by smooth weighted round robin (every prefix holds
    the shares as closely as whole lectures can), its voice the engine's next in a seeded order, its English
    voice the next of a seeded order. Kokoro synthesises ~30x slower than gcin or eSpeak on a CPU, so its
    share is what decides how long hours of audio take to make."""
    import random

    unknown = sorted(set(share) - {v.engine for v in zh})
    if unknown or not any(w > 0 for w in share.values()):
        raise ValueError(f"engine_share {share}: no training Mandarin voice of engine(s) {unknown or list(share)}")
    rng = random.Random(f"cast-{seed}")
    by_engine = {e: rng.sample([v for v in zh if v.engine == e], sum(v.engine == e for v in zh))
                 for e in sorted(share) if share[e] > 0}
    english = rng.sample(en, len(en))
    credit, used, out = dict.fromkeys(by_engine, 0.0), dict.fromkeys(by_engine, 0), []
    total = sum(share[e] for e in by_engine)
    for k in range(lectures):
        for e in by_engine:
            credit[e] += share[e]
        engine = max(by_engine, key=lambda e: (credit[e], e))
        credit[engine] -= total
        voices = by_engine[engine]
        out.append(Pair(voices[used[engine] % len(voices)], english[k % len(english)]))
        used[engine] += 1
    return out


def heldout_rotation() -> tuple[Pair, ...]:
    """Held-out speakers in turn, the Mandarin voice changing fastest: n utterances give every held-out Mandarin
    voice (a reported group) n / n_zh of them, and its English partner alternates."""
    zh, en = synth.voices("zh", True), synth.voices("en", True)
    return tuple(Pair(z, e) for e in en for z in zh)


def _block(bank, split: str, index: int, size: int, kinds=None) -> tuple[tuple[str, str, str], ...]:
    return tuple((s.text, s.kind, s.source) for s in bank.sentences(split, size, index * size, kinds))


def _lecture_block(bank, index: int, size: int, capacity: int) -> tuple[tuple[str, str, str], ...]:
    """Lecture ``index``'s sentences. The training text holds ``capacity`` blocks (666 of 3-minute lectures); a
    lecture past them reads block ``index - capacity`` backwards. A lecture speaks its block from the front until
    it is long enough, a small part of it (the block is sized for 1.5 s sentences), so the back of a block is
    text no lecture spoke, now said by another lecturer on another channel: ~2× the hours of new text. Past a
    second pass the text would repeat: the bank has run out (empty block, refused by :func:`plan`)."""
    if index < capacity:
        return _block(bank, "train", index, size)
    if index < 2 * capacity:
        return _block(bank, "train", index - capacity, size)[::-1]
    return ()


def plan(options: SynthOptions) -> tuple[list[Job], dict]:
    """Every item of the corpus (lectures up to ``lecture_limit``) and the facts the reports need."""
    mix = tuple(sorted((options.text_mix or {}).items())) or None
    bank = text_bank(options.seed, mix, options.text_script)
    tag, engines, extra = digest(options), options.training_engines, synth.blends(options)
    import random

    if options.engine_share:
        lecturers = cast(options.lectures, synth.training_voices("zh", engines) + extra, synth.training_voices("en", engines),
                         options.engine_share, options.seed)
    else:
        lecturers = synth.lecture_pairs(options.lectures, random.Random(options.seed), engines, extra)
    if options.heldout_lectures is not None and not (options.engine_share and 0 < options.heldout_lectures <=
                                                     options.lectures):
        raise ValueError(f"corpus synth: heldout_lectures {options.heldout_lectures} needs engine_share (only its "
                         f"casting keeps a longer corpus's first lectures) and 1..lectures ({options.lectures})")
    speakers = tuple(sorted(set(lecturers[: options.heldout_lectures]), key=lambda p: p.name))
    jobs: list[Job] = []

    def name(split: str, index: int) -> str:
        return f"{split}/{split}_{index:04d}-{tag}.flac"

    sets = [("test", options.test_utterances, "test", speakers, False, HELDOUT_KINDS),
            ("dev", options.dev_utterances, "dev", speakers, False, HELDOUT_KINDS),
            ("test_ood", options.ood_test_utterances, "test_ood", heldout_rotation(), True, HELDOUT_KINDS),
            ("dev_ood", options.ood_dev_utterances, "dev_ood", heldout_rotation(), True, HELDOUT_KINDS),
            ("test_ood_clear", options.ood_clear_utterances, "clear", tuple(synth.clear_pairs(engines)), True,
             ("mandarin",))]
    for split, count, text_split, pairs, rotate, kinds in sets:
        for i in range(count):
            jobs.append(Job(split, i, name(split, i), pairs, rotate,
                            _block(bank, text_split, i, UTTERANCE_BLOCK, kinds), 0.0))
    seconds = options.lecture_minutes * 60
    size = math.ceil(seconds / SECONDS_PER_SENTENCE) + 4
    limit = options.lectures if options.lecture_limit is None else min(options.lecture_limit, options.lectures)
    # lecture blocks the training text holds; the whole sequence (~30 s to make) only for a corpus that outgrows it
    fits = len(bank.sentences("train", size, (max(limit, 1) - 1) * size)) == size
    capacity = limit if fits else len(bank.sentences("train", 10**9)) // size
    if options.encoder_minutes > 0 and limit > capacity:
        raise ValueError(f"corpus synth: encoder_minutes reads the text after every lecture's block, and "
                         f"{limit} lectures leave none (at most {capacity})")
    for k in _kept_lectures(options, lecturers, limit):
        jobs.append(Job("lectures", k, name("lectures", k), (lecturers[k],), False,
                        _lecture_block(bank, k, size, capacity), seconds))
    short = [j for j in jobs if len(j.sentences) < (size if j.lecture else UTTERANCE_BLOCK)]
    if short:
        raise ValueError(f"the text bank ran out for {short[0].split} item {short[0].index}: ask for fewer items")
    facts = {"text_counts": bank.counts(), "blends": extra, "lecturers": lecturers,
             "encoder_sentences": [s.text for s in bank.sentences("train", 2000, options.lectures * size)]
             if options.encoder_minutes > 0 else []}
    return jobs, facts


def _kept_lectures(options: SynthOptions, lecturers: list[Pair], limit: int) -> list[int]:
    """The lectures among the first ``limit`` that ``engine_lecture_limit`` keeps: a lecture's index is its place in
    the full corpus, so a kept lecture is the same item (name, voices, sentences) in every corpus that keeps it."""
    caps = options.engine_lecture_limit or {}
    if caps and not options.engine_share:
        raise ValueError("corpus synth: engine_lecture_limit needs engine_share (only its casting gives each lecture "
                         "its engine independently of the corpus size)")
    unknown = set(caps) - set(options.engine_share or {})
    if unknown:
        raise ValueError(f"corpus synth engine_lecture_limit: {sorted(unknown)} not in engine_share "
                         f"{sorted(options.engine_share or {})}")
    return [k for k in range(limit) if k < caps.get(lecturers[k].mandarin.engine, limit)]


@lru_cache(maxsize=65536)
def readable(voice: VoiceSpec, text: str) -> bool:
    """Whether ``voice`` can say every syllable of ``text`` with the recordings it may use: a held-out gcin
    speaker lacks 42 syllables and may not borrow a training speaker's, and some syllables (ㄔㄨㄞ) no gcin
    speaker recorded in any tone, so a training speaker with a fallback can fail too."""
    if voice.engine != "gcin":
        return True
    reader = mandarin_reader(voice)
    try:
        for syllable in bopomofo_of(text):
            reader.recording(syllable)
    except KeyError:
        return False
    return True


def make(job: Job, options: SynthOptions, store: Path) -> dict:
    """Make one item unless its sidecar exists; return its manifest row (plus timing for speed.json)."""
    audio_path, sidecar = store / job.name, store / (job.name + ".json")
    if sidecar.exists():
        return json.loads(sidecar.read_text(encoding="utf-8"))
    started, cpu = time.perf_counter(), _cpu()
    rng = synth._item_rng(options, job.split, job.index)
    if job.lecture:
        pair = job.pairs[0]
    else:
        drawn = int(rng.integers(len(job.pairs)))  # drawn either way, as in the template sets
        pair = job.pairs[job.index % len(job.pairs) if job.rotate else drawn]
    condition = synth._condition(options, job.split.endswith(("_ood", "_ood_clear")), rng)
    audio, row = (_lecture if job.lecture else _utterance)(job, pair, condition, options, rng)
    audio = synth._record(audio, condition, options, rng)
    audio_path.parent.mkdir(parents=True, exist_ok=True)
    partial = audio_path.with_name(audio_path.stem + ".partial.flac")
    write_audio(partial, audio)
    os.replace(partial, audio_path)
    row = {**row, "voice" if not job.lecture else "voices": pair.name, "condition": condition.to_json(),
           "seconds": round(len(audio) / SAMPLE_RATE, 2), "engine": pair.mandarin.engine,
           "synth_seconds": round(time.perf_counter() - started, 2), "cpu_seconds": round(_cpu() - cpu, 2)}
    atomic_write_text(sidecar, json.dumps(row, ensure_ascii=False))
    return row


def _cpu() -> float:
    """CPU seconds of this process and its finished children (espeak-ng and flite run as subprocesses)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _lecture(job: Job, pair: Pair, condition, options: SynthOptions, rng) -> tuple[np.ndarray, dict]:
    """Sentences in their block's order with 0.35-1.1 s pauses until the lecture is long enough; a sentence the
    lecturer cannot read is passed over."""
    pieces, spoken, length, target = [], [], 0, int(job.seconds * SAMPLE_RATE)
    for text, kind, source in job.sentences:
        if length >= target:
            break
        if not readable(pair.mandarin, text):
            continue
        audio = synth._say(text, pair, condition, rng)
        pause = np.zeros(int(rng.uniform(0.35, 1.1) * SAMPLE_RATE), dtype=np.float32)
        spoken.append({"start": round(length / SAMPLE_RATE, 2), "text": text, "kind": kind, "source": source})
        pieces += [audio, pause]
        length += len(audio) + len(pause)
    return np.concatenate(pieces), {"sentences": spoken}


def _utterance(job: Job, pair: Pair, condition, options: SynthOptions, rng) -> tuple[np.ndarray, dict]:
    """Sentences of the block joined with short pauses until ``min_utterance_s``; a sentence the voice cannot
    read, or one that alone would pass ``max_utterance_s``, is passed over for the next."""
    pad = int(synth._PAD_S * SAMPLE_RATE)
    room = options.max_utterance_s * SAMPLE_RATE - 2 * pad
    texts, kinds, pieces, length = [], [], [], 0
    for text, kind, _ in job.sentences:
        if length >= options.min_utterance_s * SAMPLE_RATE - 2 * pad:
            break
        if not readable(pair.mandarin, text):
            continue
        audio = synth._say(text, pair, condition, rng)
        gap = np.zeros(int(rng.uniform(0.3, 0.6) * SAMPLE_RATE) if pieces else 0, dtype=np.float32)
        if length + len(gap) + len(audio) > room:
            if texts:
                break
            continue
        texts.append(text)
        kinds.append(kind)
        pieces += [gap, audio]
        length += len(gap) + len(audio)
    if not texts:
        raise ValueError(f"{job.split} item {job.index}: no sentence of its block fits {pair.name}")
    body = np.concatenate(pieces)
    extra = max(0, int(options.min_utterance_s * SAMPLE_RATE) - len(body) - 2 * pad)
    audio = np.concatenate([np.zeros(pad + extra // 2, np.float32), body, np.zeros(pad + extra - extra // 2, np.float32)])
    return audio, {"text": "，".join(texts), "language": "zh", "group": synth._group(pair, job.split),
                   "sentences": texts, "kinds": kinds}


def run_jobs(jobs: list[Job], options: SynthOptions, store: Path, workers: int) -> dict[tuple[str, int], dict]:
    """Make every job (longest first: a long lecture started last would leave the other workers idle)."""
    order = sorted(jobs, key=lambda j: (-j.seconds, j.split, j.index))
    rows: dict[tuple[str, int], dict] = {}
    with tqdm(total=len(order), desc="synth items", unit="item") as progress:
        def done(job: Job, row: dict) -> None:
            rows[(job.split, job.index)] = row
            audio_h = sum(r["seconds"] for r in rows.values()) / 3600
            progress.set_postfix_str(f"{audio_h:.2f} h of audio", refresh=False)
            progress.update()

        if workers <= 1:
            for job in order:
                done(job, make(job, options, store))
            return rows
        with synth.synthesis_pool(workers) as pool:
            futures = {pool.submit(make, job, options, store): job for job in order}
            for future in as_completed(futures):
                done(futures[future], future.result())
    return rows


def _relative(out: Path, store: Path, name: str) -> str:
    return os.path.relpath(store / name, out)


def build_real(out: Path, options: SynthOptions) -> None:
    """The whole real-text corpus into ``out`` (its manifests; audio in ``audio_store`` or ``out``). The workers
    are spawned: a script that calls this needs the ``if __name__ == "__main__":`` guard (``k2d`` has it)."""
    store = Path(options.audio_store) if options.audio_store else out
    jobs, facts = plan(options)
    workers = options.workers or os.cpu_count() or 1
    started = time.perf_counter()
    rows = run_jobs(jobs, options, store, min(workers, len(jobs)))
    wall = time.perf_counter() - started
    sets: dict[str, list[dict]] = {}
    conditions: dict[str, dict] = {}
    for job in sorted(jobs, key=lambda j: (j.split, j.index)):
        row = dict(rows[(job.split, job.index)])
        audio = _relative(out, store, job.name)
        conditions[audio] = row.pop("condition")
        for key in ("seconds", "engine", "synth_seconds", "cpu_seconds"):
            row.pop(key, None)
        sets.setdefault(job.split, []).append({"audio": audio, **row})
    lectures = sets.pop("lectures", [])
    write_manifest(out / "lectures.jsonl", [{"audio": r["audio"], "voices": r["voices"]} for r in lectures])
    write_manifest(out / "lectures_reference.jsonl", lectures)
    for split, split_rows in sets.items():
        write_manifest(out / f"{split}.jsonl", split_rows)
    if options.ood_noisy and sets.get("test_ood"):
        sets["test_ood_noisy"] = synth._noisy_copy(sets["test_ood"][: options.ood_noisy_utterances], "test_ood_noisy",
                                                   out, options)
    if options.encoder_minutes > 0:
        synth._encoder_audio(facts["encoder_sentences"], out, options)  # sentences after every lecture's block
    sets["lectures"] = lectures
    report = synth._voices_report(sets, facts["blends"])
    report["blends"] = [v.describe() for v in facts["blends"]]
    (out / "voices.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    (out / "conditions.json").write_text(json.dumps(conditions, indent=1) + "\n")
    (out / "text.json").write_text(json.dumps({"base_sentences": facts["text_counts"], "spoken": _spoken(sets)},
                                              ensure_ascii=False, indent=2) + "\n")
    (out / "speed.json").write_text(json.dumps(_speed(rows, wall, workers), indent=2) + "\n")


def _spoken(sets: dict[str, list[dict]]) -> dict:
    """Sentences spoken per split and kind."""
    out: dict[str, dict[str, int]] = {}
    for split, rows in sets.items():
        counts: dict[str, int] = {}
        for row in rows:
            for kind in row.get("kinds") or [s["kind"] for s in row.get("sentences", []) if isinstance(s, dict)]:
                counts[kind] = counts.get(kind, 0) + 1
        out[split] = counts
    return out


def _speed(rows: dict, wall: float, workers: int) -> dict:
    """Per Mandarin voice engine: audio seconds per second of one process's wall time (what this machine gave,
    load included) and per CPU second (what a core gives, whatever else ran: the figure to project with).
    Items made by an earlier run count with the time they took then."""
    engines: dict[str, dict[str, float]] = {}
    for row in rows.values():
        entry = engines.setdefault(row["engine"], {"audio_s": 0.0, "synth_s": 0.0, "cpu_s": 0.0, "items": 0})
        entry["audio_s"] += row["seconds"]
        entry["synth_s"] += row["synth_seconds"]
        entry["cpu_s"] += row.get("cpu_seconds", row["synth_seconds"])
        entry["items"] += 1
    for entry in engines.values():
        entry["audio_per_synth_s"] = round(entry["audio_s"] / max(entry["synth_s"], 1e-9), 2)
        entry["audio_per_cpu_s"] = round(entry["audio_s"] / max(entry["cpu_s"], 1e-9), 2)
        for key in ("audio_s", "synth_s", "cpu_s"):
            entry[key] = round(entry[key], 1)
    audio = sum(r["seconds"] for r in rows.values())
    return {"workers": workers, "wall_s": round(wall, 1), "audio_s": round(audio, 1), "engines": engines}
