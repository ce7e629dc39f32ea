"""Phoneme sequences for the phoneme error rate (PER) between teacher and validator.

PER forgives what MER punishes but a listener would not: homophones (他/她, 在/再), and English
spellings that sound alike. Mandarin becomes pinyin initials + toned finals (pypinyin); English
becomes IPA phonemes from espeak-ng, the real G2P that piper-tts ships with its data.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from k2d.scoring import edit_counts, is_han, units

_STRESS = {"ˈ", "ˌ", "ː"}


@lru_cache(maxsize=1)
def _espeak():
    import piper
    from piper.phonemize_espeak import EspeakPhonemizer

    return EspeakPhonemizer(str(Path(piper.__file__).parent / "espeak-ng-data"))


@lru_cache(maxsize=20000)
def english_phonemes(word: str) -> tuple[str, ...]:
    sentences = _espeak().phonemize("en-us", word)
    return tuple(p for sentence in sentences for p in sentence if p.strip() and p not in _STRESS)


@lru_cache(maxsize=20000)
def mandarin_phonemes(char: str) -> tuple[str, ...]:
    from pypinyin import Style, pinyin

    initial = pinyin(char, style=Style.INITIALS, strict=False)[0][0]
    final = pinyin(char, style=Style.FINALS_TONE3, strict=False, neutral_tone_with_five=True)[0][0]
    return tuple(p for p in (initial, final) if p)


def phonemes(text: str) -> list[str]:
    out: list[str] = []
    for unit in units(text):
        out.extend(mandarin_phonemes(unit) if is_han(unit) else english_phonemes(unit))
    return out


def per(reference: str, hypothesis: str) -> float:
    return edit_counts(phonemes(reference), phonemes(hypothesis)).rate
