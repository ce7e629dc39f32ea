"""How a served model decodes, as one object: the server's settings build it, ``k2d evaluate`` and
``k2d compare`` take it (a contender overrides a few fields), :func:`k2d.load` starts from its defaults.

Two different "fallbacks" exist and are named apart everywhere:

- **temperature fallback** — Whisper's own: a window that fails the loop guard is decoded again by
  sampling at rising temperatures (``GuardOptions.temperatures``; for a teacher standing in for its
  student, ``teacher_sampling`` says on which of its flags);
- **teacher fallback** — k2d's cascade: a *student's* window that loops is decoded again by the
  teacher it was distilled from, when that teacher is served beside it (``teacher_fallback``).
"""

from __future__ import annotations

from dataclasses import dataclass

from k2d.context import ContextPolicy
from k2d.guard import LOOP_REASONS, REASONS, GuardOptions, RepetitionPenalty, SampleOn, sample_on


@dataclass(frozen=True)
class DecodePolicy:
    beam_size: int = 5  # beam width
    guard: bool = True  # the loop guard on every window (token budget, compression, log-prob, n-gram)
    guard_tokens_per_s: float = 12.0  # guard: most tokens per second of audio
    guard_compression_ratio: float = 2.4  # guard: highest gzip compression ratio of the text
    guard_logprob: float = -1.0  # guard: lowest mean log-prob
    teacher_fallback: bool = True  # a student's looping window goes to its teacher, when that is served
    teacher_fallback_on: tuple[str, ...] = LOOP_REASONS  # which guard flags send it there
    teacher_sampling: SampleOn = "all"  # the temperature fallback of a teacher standing in: all | loops | none
    repetition_penalty: float | None = None  # override the model's own (its registry entry's)
    context: str | None = None  # override the model's own context: "full" or "PAD/BUCKET" seconds
    # the context of the teacher standing in for a student's flagged windows (None: its own, Whisper's 30 s); the
    # server's K2D_TEACHER_CONTEXT sets it, as it sets the context of the teacher served on its own
    teacher_context: str | None = None
    vad: bool = True  # cut at speech pauses with Silero VAD (off: fixed windows)
    vad_min_silence_ms: int = 500  # a pause this long ends a speech region

    def __post_init__(self):
        sample_on(self.teacher_sampling)
        unknown = set(self.teacher_fallback_on) - set(REASONS)
        if unknown:
            raise ValueError(f"unknown guard reasons {sorted(unknown)}; known: {list(REASONS)}")
        object.__setattr__(self, "teacher_fallback_on", tuple(self.teacher_fallback_on))
        for context in (self.context, self.teacher_context):
            if context is not None:
                ContextPolicy.parse(context)  # a bad value fails here, not when the first window arrives

    def guard_for(self, cascades: bool) -> GuardOptions:
        """A student in front of its teacher sends loops there instead of sampling; others sample (Whisper)."""
        return GuardOptions.for_model(cascades, self.teacher_fallback_on, enabled=self.guard,
                                      tokens_per_s=self.guard_tokens_per_s,
                                      compression_ratio=self.guard_compression_ratio, logprob=self.guard_logprob)

    def context_policy(self) -> ContextPolicy | None:
        """None: the model's own (a short-context student's is in its folder)."""
        return None if self.context is None else ContextPolicy.parse(self.context)

    def penalty(self, own: RepetitionPenalty) -> RepetitionPenalty:
        return own.overridden(self.repetition_penalty)
