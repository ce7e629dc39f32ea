"""Text normalisation and the error rates of code-switching ASR.

MER (mixed error rate) counts Mandarin *characters* and English *words* as units, the standard
for Mandarin-English code-switching: a character error rate alone over-weights English, a word
error rate alone is undefined for unsegmented Chinese. Whisper writes traditional or simplified
characters unpredictably, so both sides go through OpenCC t2s first.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import jiwer

_HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNIT = re.compile(rf"[{_HAN}]|[a-z0-9]+(?:'[a-z]+)?")
_TIMESTAMP = re.compile(r"<\|\d+\.\d+\|>")
_SPECIAL = re.compile(r"<\|[^|]*\|>")


@lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def normalize(text: str) -> str:
    """Simplified characters, lower case, no punctuation/special tokens, single spaces."""
    text = _SPECIAL.sub(" ", text)
    text = unicodedata.normalize("NFKC", _t2s().convert(text)).lower()
    return " ".join(_UNIT.findall(text))


def units(text: str) -> list[str]:
    """Mandarin characters and English words of the normalised text."""
    return normalize(text).split()


def is_han(unit: str) -> bool:
    return bool(re.fullmatch(rf"[{_HAN}]", unit))


def strip_timestamps(text: str) -> str:
    return " ".join(_TIMESTAMP.sub(" ", text).split())


@dataclass
class ErrorCounts:
    """Edit operations against a reference length, so rates can be pooled over a corpus."""

    errors: int = 0
    reference: int = 0

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(self.errors + other.errors, self.reference + other.reference)

    @property
    def rate(self) -> float:
        if self.reference == 0:
            return 0.0 if self.errors == 0 else 1.0
        return self.errors / self.reference


def edit_counts(reference: list[str], hypothesis: list[str]) -> ErrorCounts:
    """Substitutions + deletions + insertions between two unit sequences (jiwer)."""
    if not reference:
        return ErrorCounts(len(hypothesis), 0)
    if not hypothesis:
        return ErrorCounts(len(reference), len(reference))
    out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    return ErrorCounts(out.substitutions + out.deletions + out.insertions, len(reference))


def mer_counts(reference: str, hypothesis: str) -> ErrorCounts:
    return edit_counts(units(reference), units(hypothesis))


def mer(reference: str, hypothesis: str) -> float:
    return mer_counts(reference, hypothesis).rate


def cer_zh_counts(reference: str, hypothesis: str) -> ErrorCounts:
    """Mandarin characters only (English removed from both sides)."""
    return edit_counts([u for u in units(reference) if is_han(u)], [u for u in units(hypothesis) if is_han(u)])


def wer_en_counts(reference: str, hypothesis: str) -> ErrorCounts:
    """English words only (Mandarin removed from both sides)."""
    return edit_counts([u for u in units(reference) if not is_han(u)], [u for u in units(hypothesis) if not is_han(u)])


def repeated_ngram(text: str, n: int = 3, count: int = 3) -> bool:
    """The hallucination flag h: some n-gram of units occurs at least ``count`` times.

    Whisper's characteristic failure on long-form audio is a loop ("這個...這個...這個...");
    a repeated n-gram catches it without a reference, which is why K²D uses it on both the
    teacher's labels and the validator's output.
    """
    tokens = units(text)
    if len(tokens) < n * count:
        return False
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return max(grams.values()) >= count
