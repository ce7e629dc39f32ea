"""Text normalisation and the error rates of code-switching ASR.

MER (mixed error rate) counts Mandarin *characters* and English *words* as units, the standard
for Mandarin-English code-switching: a character error rate alone over-weights English, a word
error rate alone is undefined for unsegmented Chinese. Whisper writes traditional or simplified
characters unpredictably, so both sides go through OpenCC t2s first.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import jiwer
import numpy as np

from k2d.textunits import has_repeated_ngram, is_han, raw_units

_TIMESTAMP = re.compile(r"<\|\d+\.\d+\|>")
_SPECIAL = re.compile(r"<\|[^|]*\|>")


@lru_cache(maxsize=4)
def _opencc(conversion: str):
    import opencc

    return opencc.OpenCC(conversion)


def _t2s():
    return _opencc("t2s")


SCRIPTS = ("simplified", "traditional", "as_is")


def to_script(text: str, script: str) -> str:
    """Labels in one script: Whisper base flips between Traditional and Simplified from chunk to
    chunk, and a student trained on both learns a coin flip."""
    if script == "as_is":
        return text
    if script not in SCRIPTS:
        raise ValueError(f"unknown label_script {script!r}; choose one of {', '.join(SCRIPTS)}")
    return _opencc("t2s" if script == "simplified" else "s2t").convert(text)


def normalize(text: str) -> str:
    """Simplified characters, lower case, no punctuation/special tokens, single spaces."""
    text = _SPECIAL.sub(" ", text)
    return " ".join(raw_units(unicodedata.normalize("NFKC", _t2s().convert(text))))


def units(text: str) -> list[str]:
    """Mandarin characters and English words of the normalised text."""
    return normalize(text).split()


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


def unmatched_share(reference: list[str], hypothesis: list[str]) -> float:
    """The share of ``reference`` units that no in-order match in ``hypothesis`` covers (1 − LCS / len):
    a recall distance that extra hypothesis units do not raise. 0 for an empty reference."""
    if not reference:
        return 0.0
    previous = [0] * (len(hypothesis) + 1)
    for unit in reference:
        current = [0]
        for j, other in enumerate(hypothesis):
            current.append(previous[j] + 1 if unit == other else max(previous[j + 1], current[j]))
        previous = current
    return 1.0 - previous[-1] / len(reference)


def mer_counts(reference: str, hypothesis: str) -> ErrorCounts:
    return edit_counts(units(reference), units(hypothesis))


@dataclass(frozen=True)
class PairedDifference:
    """Contender − baseline MER on the same utterances, with a paired-bootstrap confidence interval."""

    difference: float
    low: float
    high: float
    utterances: int

    @property
    def verdict(self) -> str:
        """``worse`` / ``better`` only when the interval excludes 0; otherwise ``tie`` (the data cannot tell)."""
        return "worse" if self.low > 0 else "better" if self.high < 0 else "tie"


def paired_bootstrap(references: list[str], baseline: list[str], contender: list[str], resamples: int = 2000,
                     level: float = 0.95, seed: int = 0) -> PairedDifference:
    """Resample utterances with replacement (the same draw for both models) and pool each model's MER over
    the draw: the interval of the pooled difference says whether one model is really worse on a set, or
    whether a character or two on a few utterances is noise (Koehn 2004, paired bootstrap)."""
    counts = [(mer_counts(r, b), mer_counts(r, c)) for r, b, c in zip(references, baseline, contender, strict=True)]
    if not counts:
        return PairedDifference(0.0, 0.0, 0.0, 0)
    base_err = np.array([b.errors for b, _ in counts], dtype=np.float64)
    cont_err = np.array([c.errors for _, c in counts], dtype=np.float64)
    units_ = np.array([max(b.reference, 1) for b, _ in counts], dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(counts), size=(resamples, len(counts)))
    diffs = (cont_err[draws].sum(1) - base_err[draws].sum(1)) / units_[draws].sum(1)
    low, high = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    point = (cont_err.sum() - base_err.sum()) / units_.sum()
    return PairedDifference(round(float(point), 4), round(float(low), 4), round(float(high), 4), len(counts))


def mer(reference: str, hypothesis: str) -> float:
    return mer_counts(reference, hypothesis).rate


def cer_zh_counts(reference: str, hypothesis: str) -> ErrorCounts:
    """Mandarin characters only (English removed from both sides)."""
    return edit_counts([u for u in units(reference) if is_han(u)], [u for u in units(hypothesis) if is_han(u)])


def wer_en_counts(reference: str, hypothesis: str) -> ErrorCounts:
    """English words only (Mandarin removed from both sides)."""
    return edit_counts([u for u in units(reference) if not is_han(u)], [u for u in units(hypothesis) if not is_han(u)])


def repeated_ngram(text: str, n: int = 3, count: int = 3) -> bool:
    """The hallucination flag h on normalised units (see ``k2d.textunits.has_repeated_ngram``)."""
    return has_repeated_ngram(units(text), n, count)
