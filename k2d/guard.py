"""The loop guard: decide, without a reference, whether a window's transcript can be trusted.

A distilled student meets audio it is worse at, and Whisper-family decoders fail by looping
("在三樓復復復復…") until the token limit, which also holds the whole cross-request batch. Four
signals, each cheap: a token budget proportional to the window's duration (a loop runs into it),
the gzip compression ratio and average log-probability Whisper itself uses for temperature
fallback (2.4 and -1.0), and K²D's repeated-n-gram hallucination flag, widened to back-to-back
repeats too short for it ("我博博博博博博博").
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, replace
from typing import Literal, get_args

from k2d.textunits import has_consecutive_repeat, has_repeated_ngram, raw_units

# "trimmed": a window still looping after every fallback had its repeated run cut (see collapse_repeats)
REASONS = ("token_budget", "compression_ratio", "logprob", "repeated_ngram", "trimmed")
# Signals of a loop, as opposed to low confidence. Only these send a student's window to its teacher by
# default: on hard audio a low log-probability is the normal state of a small model and re-decoding it
# with the teacher bought nothing (docs/benchmarks/guard-cpu) while costing the student its speed.
LOOP_REASONS = ("token_budget", "compression_ratio", "repeated_ngram")
SampleOn = Literal["all", "loops", "none"]  # which flagged windows are re-decoded by sampling
# 1-32 characters said at least three times in a row ("復復復", "【【【", "the model the model the model ")
_RUN = re.compile(r"(.{1,32}?)\1{2,}", re.S)


def sample_on(value: str) -> SampleOn:
    """``value`` as a ``SampleOn``, or a ValueError that lists the choices (configs, CLI flags, compare specs)."""
    if value not in get_args(SampleOn):
        raise ValueError(f"fallback sampling {value!r}: choose one of {', '.join(get_args(SampleOn))}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class GuardOptions:
    enabled: bool = True
    tokens_per_s: float = 12.0  # speech rarely needs 8 tokens/s, timestamps included
    min_tokens: int = 32
    max_tokens: int = 440  # Whisper's decoder has 448 positions, the prompt included
    compression_ratio: float | None = 2.4
    logprob: float | None = -1.0
    ngram_n: int = 4
    ngram_count: int = 4
    run_min_units: int | None = 6  # also flag back-to-back repeats this long (has_consecutive_repeat); None: off
    temperatures: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)  # re-decoding a flagged window by sampling
    teacher_on: tuple[str, ...] = ()  # flags that send this student's window to its teacher (none: no teacher)

    @classmethod
    def for_model(cls, cascades: bool, teacher_on: tuple[str, ...] = LOOP_REASONS, **thresholds) -> GuardOptions:
        """A student in front of its teacher (teacher fallback on ``teacher_on`` flags) does not also sample at
        higher temperatures; any other model keeps Whisper's temperature fallback."""
        if not cascades:
            return cls(**thresholds)
        unknown = set(teacher_on) - set(REASONS)
        if unknown:
            raise ValueError(f"unknown guard reasons {sorted(unknown)}; known: {list(REASONS)}")
        return cls(**thresholds, temperatures=(), teacher_on=tuple(teacher_on))

    def budget(self, seconds: float) -> int:
        """New tokens a window of ``seconds`` may generate before it counts as a loop."""
        if not self.enabled:
            return self.max_tokens
        return int(min(self.max_tokens, max(self.min_tokens, self.tokens_per_s * seconds)))

    def escalates(self, flag: str | None) -> bool:
        """Whether a window with this flag goes to the teacher (when one is served behind the student)."""
        return flag is not None and flag in self.teacher_on


@dataclass(frozen=True)
class RepetitionPenalty:
    """CTranslate2's penalty on tokens already generated, for windows up to ``max_window_s``.

    A small distilled decoder drifts into loops on voices it never heard; a penalty keeps most of those
    windows away from the teacher. Over a long window it also penalises what speech legitimately repeats
    (的, 我們, the): on minute-long dev audio it cost the fuller student accuracy (README, "Loops"), so
    longer windows decode without it. A model's own is in its registry entry."""

    value: float = 1.0
    max_window_s: float = 15.0

    def for_window(self, seconds: float) -> float:
        return self.value if seconds <= self.max_window_s else 1.0

    def overridden(self, value: float | None) -> RepetitionPenalty:
        """This penalty with an operator's (or a comparison's) value instead of the model's own."""
        return replace(self, value=value) if value else self


def compression_ratio(text: str) -> float:
    """Bytes over zlib-compressed bytes: repetitive text compresses far better than speech does."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def check(text: str, tokens: int, avg_logprob: float, budget: int, options: GuardOptions) -> str | None:
    """The first reason this transcript looks like a loop or a hallucination, or None."""
    if not options.enabled:
        return None
    if tokens >= budget:
        return "token_budget"
    if options.compression_ratio is not None and compression_ratio(text) > options.compression_ratio:
        return "compression_ratio"
    units = raw_units(text)
    if has_repeated_ngram(units, options.ngram_n, options.ngram_count) or \
            (options.run_min_units is not None and has_consecutive_repeat(units, options.run_min_units)):
        return "repeated_ngram"
    if options.logprob is not None and tokens and avg_logprob < options.logprob:
        return "logprob"
    return None


def collapse_repeats(text: str) -> str:
    """A loop cut back to one occurrence of what it repeats: the last resort once a window has run out
    of fallbacks, so no response carries ``復復復復…`` or ``【【【【…``. Digit runs ("1000") stay."""

    def keep_one(match: re.Match) -> str:
        unit = match.group(1)
        return match.group(0) if unit.strip().isdigit() or not unit.strip() else unit

    return _RUN.sub(keep_one, text)
