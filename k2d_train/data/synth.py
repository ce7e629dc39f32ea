"""``k2d data synth``: a deterministic synthetic code-switching corpus with in-domain and out-of-domain sets.

Produces

- ``lectures.jsonl``: unlabelled long-form "lectures" (the input of pseudo-labelling), each one
  lecturer = one TRAINING voice pair (Mandarin + English), several lectures per pair, in-domain
  sentences, and (``augment``) one random room, microphone, noise floor, pitch and tempo per lecture.
  Their transcripts go to ``lectures_reference.jsonl`` for analysis only; no training stage reads it.
- ``test.jsonl`` / ``dev.jsonl``: in-domain utterances (the lectures' voice pairs, lecture sentence
  frames and terms, training acoustic conditions) whose sentences are never spoken in a lecture.
- ``test_ood.jsonl`` / ``dev_ood.jsonl``: out-of-domain utterances: HELD-OUT voices of both languages
  and OOD sentences (other frames, other terms), under different, milder acoustic conditions.
- ``voices.json`` (which voices were used where) and ``conditions.json`` (each file's acoustic condition).

Every item draws from its own generator seeded by (seed, split, index), so the corpus is a pure
function of :class:`SynthOptions`; ``corpus.json`` records them and a matching corpus is reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from k2d.audio import SAMPLE_RATE, decode_audio, write_audio
from k2d.manifest import write_manifest
from k2d_train.data import augment
from k2d_train.data.sentences import clear_bank, ood_sentence_bank, sentence_bank
from k2d_train.data.voices import VOICES, VoiceSpec, speak_mixed, voices

CORPUS_VERSION = 4  # bump when the same options would give different audio or manifests
_SPLITS = {"lectures": 1, "test": 2, "dev": 3, "test_ood": 4, "dev_ood": 5, "encoder": 6, "test_ood_clear": 7}
_PAD_S = 0.25


@dataclass
class SynthOptions:
    seed: int = 0
    lectures: int = 4
    lecture_minutes: float = 2.5
    test_utterances: int = 40
    dev_utterances: int = 20
    noise_db: float = -60.0  # constant white noise floor (dBFS) under everything, augmented or not
    ood_test_utterances: int = 40
    ood_dev_utterances: int = 20
    augment: bool = True  # training conditions for lectures + in-domain sets, OOD conditions for OOD sets
    min_utterance_s: float = 3.0  # dev/test utterance length bounds, 0.25 s silence each side included
    max_utterance_s: float = 15.0
    # which engines the training voices may come from (None: all); e.g. [gcin, espeak] leaves out the clear
    # neural voices (an ablation); held-out voices are never affected
    training_engines: list[str] | None = None
    # test_ood_noisy: test_ood's utterances again at 0.92× speed under white noise at 15 dB SNR (the first N; None: all)
    ood_noisy: bool = True
    ood_noisy_utterances: int | None = None
    # test_ood_clear: the clear (neural) voices no lecture uses reading plain Mandarin the teacher gets nearly right
    ood_clear_utterances: int = 0
    # unlabelled audio for the encoder stage only (no teacher labels needed): every training voice pair,
    # harsher rooms and noise, cut into 4-12 s spans (encoder_audio.jsonl)
    encoder_minutes: float = 0.0
    # --- the data engine for hours (k2d_train/data/engine.py); the defaults leave a corpus as it was
    text: str = "templates"  # templates (sentences.py) | real (text_bank.py: real sentences, code-switched)
    text_mix: dict | None = None  # real text: {code_switched, mandarin, natural, english} weights (None: the default)
    text_script: str = "simplified"  # real text: simplified | traditional
    voice_blends: int = 0  # new Mandarin training speakers: blends of training Kokoro voices (needs kokoro training)
    channel: dict | None = None  # overrides of augment.TRAIN (lectures, test, dev): snr_db, telephone_p, codec_p, ...
    engine_share: dict | None = None  # real text: share of lectures per Mandarin engine, e.g. {gcin: 0.35, kokoro: 0.3}
    lecture_limit: int | None = None  # real text: only the first N lectures (learning-curve prefixes of one corpus)
    # real text with engine_share: per Mandarin engine, only that engine's lectures among the first N, e.g.
    # {kokoro: 60} with lecture_limit 200: more hours of text and cheap voices, the neural hours of a smaller corpus
    engine_lecture_limit: dict | None = None
    audio_store: str | None = None  # real text: where item audio lives (shared by corpora that differ in size only)
    # in-domain test/dev speakers: the voice pairs of the first N lectures (None: of every lecture). A corpus that
    # extends another with more lectures (the first ones are the same) then keeps its in-domain held-out sets
    heldout_lectures: int | None = None
    workers: int = 0  # processes synthesising (0: one per core); never changes the output


# Fields added after corpus version 4, with the values that mean "as before": left out of the stamp at those
# values, so an existing corpus is still recognised; ``workers`` never decides the output.
LATER_DEFAULTS = {"text": "templates", "text_mix": None, "text_script": "simplified", "voice_blends": 0,
                  "channel": None, "engine_share": None, "lecture_limit": None, "audio_store": None,
                  "heldout_lectures": None, "engine_lecture_limit": None}


@dataclass(frozen=True)
class Pair:
    """One simulated speaker: a Mandarin voice and the English voice it code-switches into."""

    mandarin: VoiceSpec
    english: VoiceSpec

    @property
    def name(self) -> str:
        return f"{self.mandarin.name}+{self.english.name}"


def training_voices(language: str, engines: list[str] | None = None) -> list[VoiceSpec]:
    return [v for v in voices(language, False) if engines is None or v.engine in engines or language == "en"]


def all_pairs(heldout: bool, engines: list[str] | None = None) -> list[Pair]:
    zh = voices("zh", True) if heldout else training_voices("zh", engines)
    en = voices("en", True) if heldout else training_voices("en", engines)
    return [Pair(z, e) for z in zh for e in en]


def clear_pairs(engines: list[str] | None = None) -> list[Pair]:
    """One speaker per clear (neural) Mandarin voice no lecture uses: the held-out ones, and the training ones too
    when the training engines leave neural speech out. The more unheard clear voices, the more a student that
    lost the teacher's strength on clear speech shows; they read plain Mandarin, so the English voice never speaks."""
    heard = set(training_voices("zh", engines))
    unheard = [v for v in voices("zh", True) + voices("zh", False) if v.engine == "kokoro" and v not in heard]
    return [Pair(v, voices("en", True)[0]) for v in unheard]


def lecture_pairs(lectures: int, rng: random.Random, engines: list[str] | None = None,
                  extra_zh: list[VoiceSpec] = ()) -> list[Pair]:
    """The lecturer of each lecture: ``lectures // 2`` distinct training pairs, each giving two or more lectures.

    Pair k joins Mandarin voice k mod n_zh with English voice (k + k // lcm) mod n_en: as soon as there are
    as many pairs as voices in the larger language every training voice lectures, and no pair repeats.
    ``extra_zh``: more Mandarin training voices (Kokoro blends) after the registry's.
    """
    zh, en = training_voices("zh", engines) + list(extra_zh), training_voices("en", engines)
    count = max(1, min(lectures // 2, len(zh) * len(en)))
    cycle = math.lcm(len(zh), len(en))
    pairs = [Pair(zh[k % len(zh)], en[(k + k // cycle) % len(en)]) for k in range(count)]
    rng.shuffle(pairs)
    return [pairs[i % count] for i in range(lectures)]


def _item_rng(options: SynthOptions, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([options.seed, _SPLITS[split], index])


def _say(text: str, pair: Pair, condition: augment.Condition, rng: np.random.Generator) -> np.ndarray:
    """One sentence by one speaker: a seeded speaking rate, level-normalised, then the speaker's pitch/tempo."""
    rate = 0.92 + 0.04 * int(rng.integers(5))  # few distinct rates, so the TTS cache hits
    audio = speak_mixed(text, pair.mandarin, pair.english, pause_s=float(rng.uniform(0.05, 0.15)), rate=rate)
    audio = 0.7 * audio / max(float(np.abs(audio).max()), 1e-6)
    return augment.perturb_sentence(audio, condition, rng) if condition != augment.CLEAN else audio


def _record(audio: np.ndarray, condition: augment.Condition, options: SynthOptions, rng: np.random.Generator) -> np.ndarray:
    """The microphone side: room, band-limit, noise (augmented) plus the constant floor, then clip-safe."""
    out = augment.apply_channel(audio, condition) if condition != augment.CLEAN else audio
    out = out + (rng.standard_normal(len(out)) * 10 ** (options.noise_db / 20)).astype(np.float32)
    peak = float(np.abs(out).max())
    return (out * (0.95 / peak) if peak > 0.95 else out).astype(np.float32)


def train_conditions(options: SynthOptions) -> augment.AugmentConfig:
    """augment.TRAIN with the options' ``channel`` overrides (lists become the tuples AugmentConfig holds)."""
    if not options.channel:
        return augment.TRAIN
    known = {f.name for f in fields(augment.AugmentConfig)}
    unknown = sorted(set(options.channel) - known)
    if unknown:
        raise ValueError(f"corpus synth channel: unknown keys {unknown}; known: {sorted(known)}")
    as_tuple = lambda v: tuple(as_tuple(x) for x in v) if isinstance(v, list | tuple) else v  # noqa: E731
    return replace(augment.TRAIN, **{k: as_tuple(v) for k, v in options.channel.items()})


def _condition(options: SynthOptions, ood: bool, rng: np.random.Generator) -> augment.Condition:
    if not options.augment:
        return augment.CLEAN
    return augment.draw_condition(rng, augment.OOD if ood else train_conditions(options))


def _utterance(sentences: Iterator[str], pair: Pair, condition: augment.Condition, options: SynthOptions,
               rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Sentences joined (short pauses) until the padded length reaches ``min_utterance_s``, never past the max."""
    pad = int(_PAD_S * SAMPLE_RATE)
    texts, pieces, length = [], [], 2 * pad
    while length < options.min_utterance_s * SAMPLE_RATE:
        text = next(sentences, None)
        if text is None:
            raise ValueError("the sentence bank ran out: ask for fewer dev/test utterances")
        audio = _say(text, pair, condition, rng)
        gap = np.zeros(int(rng.uniform(0.3, 0.6) * SAMPLE_RATE) if pieces else 0, dtype=np.float32)
        if texts and length + len(gap) + len(audio) > options.max_utterance_s * SAMPLE_RATE:
            break
        texts.append(text)
        pieces += [gap, audio]
        length += len(gap) + len(audio)
    body = np.concatenate(pieces)
    extra = max(0, int(options.min_utterance_s * SAMPLE_RATE) - len(body) - 2 * pad)
    lead, tail = np.zeros(pad + extra // 2, np.float32), np.zeros(pad + extra - extra // 2, np.float32)
    return texts, np.concatenate([lead, body, tail])


def _utterances(split: str, count: int, sentences: Iterator[str], pairs: list[Pair], out: Path, options: SynthOptions,
                conditions: dict, rotate: bool = False) -> list[dict]:
    """A labelled set; each utterance picks its speaker from ``pairs`` (in turn with ``rotate``: equal groups)
    and its condition from its own generator."""
    rows = []
    (out / split).mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(count), desc=f"synth {split}", unit="utt"):
        rng = _item_rng(options, split, i)
        drawn = int(rng.integers(len(pairs)))  # drawn either way: the condition's draws stay those of this index
        pair = pairs[i % len(pairs) if rotate else drawn]
        condition = _condition(options, "_ood" in split, rng)
        texts, audio = _utterance(sentences, pair, condition, options, rng)
        name = f"{split}/{split}_{i:04d}.flac"
        write_audio(out / name, _record(audio, condition, options, rng))
        conditions[name] = condition.to_json()
        rows.append({"audio": name, "text": "，".join(texts), "language": "zh", "voice": pair.name,
                     "group": _group(pair, split)})
    write_manifest(out / f"{split}.jsonl", rows)
    return rows


def _group(pair: Pair, split: str) -> str:
    """How reports split a set: out of domain, by held-out Mandarin voice (the question is each voice never
    heard); in domain, by the kind of training voice (syllable recordings, formant synthesis, neural speech) —
    a lecturer's own few utterances would be a group too small to say anything."""
    return pair.mandarin.name if "_ood" in split else f"{pair.mandarin.engine} voices"


NOISY_TEMPO, NOISY_SNR_DB = 0.92, 15.0


def _noisy_copy(rows: list[dict], split: str, out: Path, options: SynthOptions) -> list[dict]:
    """The same utterances slower and under white noise: does a model keep its accuracy when the audio
    gets harder (the teacher-easy voices above all)?"""
    (out / split).mkdir(parents=True, exist_ok=True)
    copies = []
    for i, row in enumerate(tqdm(rows, desc=f"synth {split}", unit="utt")):
        audio = augment.time_stretch(decode_audio(out / row["audio"]), NOISY_TEMPO)
        noisy = augment.add_noise(audio, NOISY_SNR_DB, "white", options.seed * 7919 + i)
        name = f"{split}/{split}_{i:04d}.flac"
        write_audio(out / name, np.clip(noisy, -1, 1).astype(np.float32))
        copies.append({**row, "audio": name, "condition": f"{NOISY_TEMPO}x speed, white noise {NOISY_SNR_DB:g} dB SNR"})
    write_manifest(out / f"{split}.jsonl", copies)
    return copies


ENCODER_NOISE = augment.AugmentConfig(snr_db=(5.0, 30.0), reverb_p=0.6, rt60=(0.2, 0.9), lowpass_p=0.3)


def _encoder_audio(sentences: list[str], out: Path, options: SynthOptions) -> list[dict]:
    """Unlabelled audio for the encoder stage alone: every training voice pair in turn, harsher conditions,
    cut at sentence ends into spans of 4-12 s (``encoder_audio.jsonl``: {audio, id, start, end})."""
    pairs = all_pairs(False, options.training_engines)
    order = random.Random(options.seed + 17)
    order.shuffle(pairs)
    (out / "encoder").mkdir(parents=True, exist_ok=True)
    rows, target = [], int(options.encoder_minutes * 60 * SAMPLE_RATE)
    files = max(1, math.ceil(options.encoder_minutes / 1.5))
    with tqdm(total=round(options.encoder_minutes * 60), desc="synth encoder audio", unit="s") as progress:
        for index in range(files):
            rng = _item_rng(options, "encoder", index)
            pair, condition = pairs[index % len(pairs)], augment.draw_condition(rng, ENCODER_NOISE)
            pieces, ends, length = [], [], 0
            while length < target / files:
                audio = _say(order.choice(sentences), pair, condition, rng)
                pieces += [audio, np.zeros(int(rng.uniform(0.2, 0.8) * SAMPLE_RATE), np.float32)]
                length += len(pieces[-2]) + len(pieces[-1])
                ends.append(length / SAMPLE_RATE)
                progress.update(round((len(pieces[-2]) + len(pieces[-1])) / SAMPLE_RATE))
            name = f"encoder/encoder_{index:03d}.flac"
            write_audio(out / name, _record(np.concatenate(pieces), condition, options, rng))
            rows += [{"audio": name, "id": f"enc{index:03d}-{n:03d}", "start": start, "end": end}
                     for n, (start, end) in enumerate(_spans(ends, rng))]
    write_manifest(out / "encoder_audio.jsonl", rows)
    return rows


def _spans(ends: list[float], rng: np.random.Generator) -> list[tuple[float, float]]:
    """Consecutive sentences grouped into spans of about 4-12 s (each drawn), ending at sentence ends."""
    spans, start, limit = [], 0.0, float(rng.uniform(4, 12))
    for end in ends:
        if end - start >= limit:
            spans.append((round(start, 3), round(end, 3)))
            start, limit = end, float(rng.uniform(4, 12))
    return spans


def _lectures(sentences: list[str], pairs: list[Pair], out: Path, options: SynthOptions, conditions: dict) -> list[dict]:
    (out / "lectures").mkdir(parents=True, exist_ok=True)
    order = random.Random(options.seed)
    pool = list(sentences)
    order.shuffle(pool)
    unlabelled, reference = [], []
    target = int(options.lecture_minutes * 60 * SAMPLE_RATE)
    with tqdm(total=round(options.lectures * options.lecture_minutes * 60), desc="synth lectures", unit="s") as progress:
        for lecture, pair in enumerate(pairs):
            rng = _item_rng(options, "lectures", lecture)
            condition = _condition(options, False, rng)
            pieces, spoken, length = [], [], 0
            while length < target:
                text = pool.pop() if pool else order.choice(sentences)
                audio = _say(text, pair, condition, rng)
                pause = np.zeros(int(rng.uniform(0.35, 1.1) * SAMPLE_RATE), dtype=np.float32)
                spoken.append({"start": round(length / SAMPLE_RATE, 2), "text": text})
                pieces += [audio, pause]
                length += len(audio) + len(pause)
                progress.update(round((len(audio) + len(pause)) / SAMPLE_RATE))
            name = f"lectures/lecture_{lecture:03d}.flac"
            write_audio(out / name, _record(np.concatenate(pieces), condition, options, rng))
            conditions[name] = condition.to_json()
            unlabelled.append({"audio": name, "voices": pair.name})
            reference.append({"audio": name, "voices": pair.name, "sentences": spoken})
    write_manifest(out / "lectures.jsonl", unlabelled)
    write_manifest(out / "lectures_reference.jsonl", reference)
    return unlabelled


def _voices_report(sets: dict[str, list[dict]], extra_zh: list[VoiceSpec] = ()) -> dict:
    used = {split: sorted({r.get("voice") or r.get("voices") for r in rows}) for split, rows in sets.items()}
    return {
        "train": {lang: [v.describe() for v in voices(lang, False) + (list(extra_zh) if lang == "zh" else [])]
                  for lang in ("zh", "en")},
        "heldout": {lang: [v.describe() for v in voices(lang, True)] for lang in ("zh", "en")},
        "used": used,
    }


def _stamp(options: SynthOptions) -> dict:
    """Options plus what else decides the audio: the code version and the voice registry (names, engines, roles)."""
    registry = [[v.name, v.engine, list(v.params), v.heldout] for v in VOICES]
    digest = hashlib.sha256(json.dumps(registry, sort_keys=True).encode()).hexdigest()[:16]
    chosen = {k: v for k, v in asdict(options).items()
              if k != "workers" and (k not in LATER_DEFAULTS or v != LATER_DEFAULTS[k])}
    return {**chosen, "version": CORPUS_VERSION, "voices": digest}


def blends(options: SynthOptions) -> list[VoiceSpec]:
    """The options' Kokoro blends (none when the training engines leave Kokoro out: blends are Kokoro speech)."""
    if not options.voice_blends or (options.training_engines is not None and "kokoro" not in options.training_engines):
        return []
    from k2d_train.data.voices import kokoro_blends

    return kokoro_blends(options.voice_blends, options.seed)


_SET_ORDER = ("test", "dev", "test_ood", "dev_ood", "test_ood_noisy", "test_ood_clear", "lectures")
Made = tuple[dict[str, list[dict]], dict[str, dict]]  # a part's sets and its files' conditions


def _in_domain_part(out: Path, options: SynthOptions, lecturers: list[Pair]) -> Made:
    """test and dev (the lecturers, unseen sentences), then the lectures and encoder audio from what is left."""
    conditions: dict[str, dict] = {}
    speakers = sorted(set(lecturers), key=lambda p: p.name)  # in-domain sets: exactly the lectures' speakers
    bank = iter(sentence_bank(options.seed))
    sets = {
        "test": _utterances("test", options.test_utterances, bank, speakers, out, options, conditions),
        "dev": _utterances("dev", options.dev_utterances, bank, speakers, out, options, conditions),
    }
    held_out_text = {text for rows in sets.values() for row in rows for text in row["text"].split("，")}
    lecture_sentences = [s for s in sentence_bank(options.seed) if s not in held_out_text]
    sets["lectures"] = _lectures(lecture_sentences, lecturers, out, options, conditions)
    if options.encoder_minutes > 0:
        _encoder_audio(lecture_sentences, out, options)
    return sets, conditions


def _out_of_domain_part(out: Path, options: SynthOptions) -> Made:
    """test_ood and dev_ood (held-out voices and sentences, one shared bank) and the noisy copy."""
    conditions: dict[str, dict] = {}
    ood, sets = iter(ood_sentence_bank(options.seed)), {}
    for split, count in (("test_ood", options.ood_test_utterances), ("dev_ood", options.ood_dev_utterances)):
        sets[split] = _utterances(split, count, ood, all_pairs(True), out, options, conditions)
    if options.ood_noisy:
        sets["test_ood_noisy"] = _noisy_copy(sets["test_ood"][: options.ood_noisy_utterances], "test_ood_noisy", out,
                                             options)
    return sets, conditions


def _clear_part(out: Path, options: SynthOptions) -> Made:
    conditions: dict[str, dict] = {}
    rows = _utterances("test_ood_clear", options.ood_clear_utterances, iter(clear_bank(options.seed)),
                       clear_pairs(options.training_engines), out, options, conditions, rotate=True)
    return {"test_ood_clear": rows}, conditions


def worker_init(threads: int) -> None:
    """A synthesis process's share of the cores (Kokoro's ONNX Runtime and BLAS read these)."""
    os.environ["K2D_KOKORO_THREADS"] = str(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def synthesis_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes (ONNX Runtime sessions do not survive a fork), each with its share of the cores."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=worker_init,
                               initargs=(max(1, (os.cpu_count() or 1) // workers),))


def in_processes(calls: list[tuple[Callable, tuple]], workers: int) -> list:
    """Each call's result, the calls run side by side on up to ``workers`` processes. The template corpus's parts
    draw from their own sentence banks and per-item generators, so they are the same bytes however many run at
    once (tests/test_data_synth.py)."""
    workers = min(workers, len(calls))
    if workers <= 1:
        return [call(*args) for call, args in calls]
    with synthesis_pool(workers) as pool:
        futures = [pool.submit(call, *args) for call, args in calls]
        return [future.result() for future in futures]


def build_corpus(out: Path, options: SynthOptions) -> bool:
    """Build the corpus unless one with the same options exists; return True if built."""
    stamp = out / "corpus.json"
    if stamp.exists() and json.loads(stamp.read_text()) == _stamp(options):
        return False
    out.mkdir(parents=True, exist_ok=True)
    if options.text == "real":
        from k2d_train.data.engine import build_real

        build_real(out, options)
        stamp.write_text(json.dumps(_stamp(options), indent=2) + "\n")
        return True
    if options.text != "templates":
        raise ValueError(f"corpus synth text: {options.text!r}; choose templates or real")
    if (options.lecture_limit is not None or options.audio_store is not None or options.engine_share
            or options.heldout_lectures is not None or options.engine_lecture_limit):
        raise ValueError("corpus synth: lecture_limit, engine_lecture_limit, audio_store, engine_share and "
                         "heldout_lectures need text: "
                         "real (template lectures draw from one shared pool, so a prefix is not a smaller corpus)")
    extra = blends(options)
    lecturers = lecture_pairs(options.lectures, random.Random(options.seed), options.training_engines, extra)
    parts = [(_clear_part, (out, options))] if options.ood_clear_utterances else []
    parts += [(_out_of_domain_part, (out, options)), (_in_domain_part, (out, options, lecturers))]  # longest first
    made = in_processes(parts, options.workers or os.cpu_count() or 1)
    sets = {name: rows for part_sets, _ in made for name, rows in part_sets.items()}
    sets = {name: sets[name] for name in _SET_ORDER if name in sets}
    conditions = dict(sorted((kv for _, part in made for kv in part.items()), key=lambda kv: kv[0]))
    (out / "voices.json").write_text(json.dumps(_voices_report(sets, extra), ensure_ascii=False, indent=2) + "\n")
    (out / "conditions.json").write_text(json.dumps(conditions, indent=1) + "\n")
    stamp.write_text(json.dumps(_stamp(options), indent=2) + "\n")
    return True
