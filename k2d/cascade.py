"""Teacher fallback, the rule written once: a student's window that loops is answered by its teacher.

The server applies it through asynchronous per-model queues (``app/guarded.py``), ``k2d evaluate`` and
:func:`k2d.load` synchronously (``k2d/transcribe.py``); both ask this class what to do, so the MER that
evaluation reports is the MER the server gives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from k2d.engine import DecodeOptions, WindowResult
from k2d.guard import SampleOn, sample_on


@dataclass(frozen=True)
class TeacherFallback:
    sampling: SampleOn = "all"  # the temperature fallback of the teacher standing in (DecodePolicy.teacher_sampling)

    def __post_init__(self):
        sample_on(self.sampling)

    @staticmethod
    def wanted(result: WindowResult) -> bool:
        """The student flagged this window for a reason that sends it to the teacher (its guard's ``teacher_on``)."""
        return result.escalate

    def options(self, options: DecodeOptions) -> DecodeOptions:
        """How the teacher decodes a window it stands in for: the request's options, its own sampling rule."""
        return replace(options, temperature_fallback=self.sampling)

    @staticmethod
    def answer(flagged: WindowResult, redone: WindowResult) -> WindowResult:
        """The teacher's transcript replaces the student's, marked as the teacher's."""
        return redone.answering_for(flagged)

    @staticmethod
    def without_teacher(flagged: WindowResult) -> bool:
        """No teacher to go to (none served, the request opted out, its queue is full): cut the loop back.
        True if something was cut."""
        return flagged.trim_loop()
