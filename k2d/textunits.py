"""The one definition of CJK characters and of the units code-switching text is measured in.

Mandarin is counted in characters and English in words (the MER convention). Serving needs the
same units for its loop flag as training needs for scoring, without training's dependencies, so
the definitions live here in the torch-free core; ``k2d.scoring`` adds script normalisation.
"""

from __future__ import annotations

import re
from collections import Counter

HAN_RANGES = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Han plus CJK punctuation and full-width forms: text between two of these joins without a space.
CJK_RANGES = HAN_RANGES + r"\u3000-\u303f\uff00-\uffef"
_HAN = re.compile(rf"[{HAN_RANGES}]")
_CJK = re.compile(rf"[{CJK_RANGES}]")
_UNIT = re.compile(rf"[{HAN_RANGES}]|[a-z0-9]+(?:'[a-z]+)?")


def is_han(char: str) -> bool:
    return bool(_HAN.fullmatch(char))


def is_cjk(char: str) -> bool:
    return bool(_CJK.fullmatch(char))


def raw_units(text: str) -> list[str]:
    """Han characters and lower-cased English words, punctuation dropped (no script conversion)."""
    return _UNIT.findall(text.lower())


def has_repeated_ngram(tokens: list[str], n: int = 3, count: int = 3) -> bool:
    """The hallucination flag h: some n-gram of units occurs at least ``count`` times.

    Whisper's characteristic failure is a loop ("這個...這個...這個..."); a repeated n-gram catches
    it without a reference, which is why K²D uses it on labels and the server uses it as a guard.
    """
    if len(tokens) < n * count:
        return False
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return max(grams.values()) >= count


def has_consecutive_repeat(tokens: list[str], min_units: int = 6, max_period: int = 8, repeats: int = 3) -> bool:
    """A run of ``repeats`` back-to-back copies of 1-``max_period`` units covering ≥ ``min_units`` units.

    The n-gram flag needs ``n × count`` units before it can fire, so a short window's loop
    ("我博博博博博博博", "Let the organization Let the organization Let the organization") slips
    under a 4 × 4 flag; a loop is *consecutive* repetition, which this catches at any length while
    leaving "哈哈哈" or "刚刚" alone."""
    for period in range(1, max_period + 1):
        matched = 0  # units so far that repeat the unit ``period`` before them
        for index in range(period, len(tokens)):
            matched = matched + 1 if tokens[index] == tokens[index - period] else 0
            if matched + period >= max(min_units, repeats * period):
                return True
    return False


def join_texts(texts: list[str]) -> str:
    """Join segment texts; no space between two CJK ends (Mandarin has none), one otherwise."""
    out = ""
    for text in (t for t in texts if t):
        if out and not (is_cjk(out[-1]) and is_cjk(text[0])):
            out += " "
        out += text
    return out
