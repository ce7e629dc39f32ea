"""``k2d data synth``: a deterministic synthetic code-switching corpus.

Produces (a) unlabelled long-form "lectures" — sentences with natural pauses, several minutes
each, the input of pseudo-labelling — and (b) labelled short-utterance dev and test manifests
whose sentences never occur in a lecture. The lecture transcripts are written to a separate
``lectures_reference.jsonl`` for analysis only; no stage of training reads it.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from k2d.audio import SAMPLE_RATE, write_audio
from k2d.manifest import write_manifest
from k2d_train.data.sentences import split_bank
from k2d_train.data.voices import EnglishVoice, MandarinVoice, speak_mixed


@dataclass
class SynthOptions:
    seed: int = 0
    lectures: int = 4
    lecture_minutes: float = 2.5
    test_utterances: int = 40
    dev_utterances: int = 20
    noise_db: float = -60.0  # background noise (dBFS); at -50 dB Whisper base starts to hallucinate loops


class Speaker:
    """One voice pair with a seeded speaking rate, so utterances differ like real speech does."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.mandarin = MandarinVoice(gap_s=0.04)

    def say(self, text: str) -> np.ndarray:
        english = EnglishVoice(length_scale=round(self.rng.uniform(0.9, 1.15), 2))
        self.mandarin.gap_s = round(self.rng.uniform(0.02, 0.07), 3)
        audio = speak_mixed(text, self.mandarin, english, pause_s=self.rng.uniform(0.05, 0.15))
        return 0.7 * audio / max(float(np.abs(audio).max()), 1e-6)


def _noise(rng: np.random.Generator, samples: int, db: float) -> np.ndarray:
    return (rng.standard_normal(samples) * 10 ** (db / 20)).astype(np.float32)


def _utterances(split: str, sentences: list[str], out: Path, speaker: Speaker, noise: np.random.Generator,
                options: SynthOptions) -> None:
    rows = []
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(tqdm(sentences, desc=f"synth {split}", unit="utt")):
        lead = np.zeros(int(0.25 * SAMPLE_RATE), dtype=np.float32)
        audio = np.concatenate([lead, speaker.say(text), lead])
        name = f"{split}/{split}_{i:04d}.flac"
        write_audio(out / name, audio + _noise(noise, len(audio), options.noise_db))
        rows.append({"audio": name, "text": text, "language": "zh"})
    write_manifest(out / f"{split}.jsonl", rows)


def _lectures(sentences: list[str], out: Path, speaker: Speaker, rng: random.Random, noise: np.random.Generator,
              options: SynthOptions) -> None:
    folder = out / "lectures"
    folder.mkdir(parents=True, exist_ok=True)
    pool = list(sentences)
    rng.shuffle(pool)
    unlabelled, reference = [], []
    target = int(options.lecture_minutes * 60 * SAMPLE_RATE)
    with tqdm(total=options.lectures * options.lecture_minutes * 60, desc="synth lectures", unit="s") as progress:
        for lecture in range(options.lectures):
            pieces, spoken, length = [], [], 0
            while length < target:
                text = pool.pop() if pool else rng.choice(sentences)
                pause = np.zeros(int(rng.uniform(0.35, 1.1) * SAMPLE_RATE), dtype=np.float32)
                audio = speaker.say(text)
                spoken.append({"start": round(length / SAMPLE_RATE, 2), "text": text})
                pieces += [audio, pause]
                length += len(audio) + len(pause)
                progress.update((len(audio) + len(pause)) / SAMPLE_RATE)
            signal = np.concatenate(pieces)
            name = f"lectures/lecture_{lecture:03d}.flac"
            write_audio(out / name, signal + _noise(noise, len(signal), options.noise_db))
            unlabelled.append({"audio": name})
            reference.append({"audio": name, "sentences": spoken})
    write_manifest(out / "lectures.jsonl", unlabelled)
    write_manifest(out / "lectures_reference.jsonl", reference)


def build_corpus(out: Path, options: SynthOptions) -> bool:
    """Build the corpus unless one with the same options exists; return True if built."""
    stamp = out / "corpus.json"
    if stamp.exists() and json.loads(stamp.read_text()) == asdict(options):
        return False
    rng = random.Random(options.seed)
    noise = np.random.default_rng(options.seed)
    test, dev, lecture = split_bank(options.seed, options.test_utterances, options.dev_utterances)
    speaker = Speaker(rng)
    _utterances("test", test, out, speaker, noise, options)
    _utterances("dev", dev, out, speaker, noise, options)
    _lectures(lecture, out, speaker, rng, noise, options)
    stamp.write_text(json.dumps(asdict(options), indent=2) + "\n")
    return True
