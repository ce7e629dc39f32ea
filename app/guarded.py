"""A student served with its teacher behind it: fallback for flagged windows, shadow scoring, harvest.

- **Fallback (cascade).** A student window the loop guard flags is re-decoded by the teacher
  and the teacher's transcript is returned (``fallback: true`` on its segments). The student
  pays for the teacher only on the windows it is unsure of.
- **Shadow scoring.** A sampled share of the student's other windows is also decoded by the
  teacher on the teacher's background lane (taken only when no foreground window waits), and
  the MER between the two transcripts goes to ``k2d_shadow_disagreement``: a live signal of
  whether the student still agrees with its teacher on *this* traffic.
- **Harvest (opt-in).** Shadowed windows are written as audio + teacher transcript to a folder
  that ``k2d run`` reads as a corpus: production traffic is exactly the realistic unlabelled
  data K²D distils from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.batching import BatchScheduler, QueueFullError, ShuttingDownError
from app.metrics import Metrics
from k2d.cascade import TeacherFallback
from k2d.engine import DecodeOptions, WindowResult

if TYPE_CHECKING:
    from app.admission import Ticket

log = logging.getLogger("k2d")
Outcome = tuple[WindowResult, float, float]  # result, queue seconds, inference seconds


class Cascade:
    def __init__(self, student: str, teacher: str, student_queue: BatchScheduler, teacher_queue: BatchScheduler,
                 metrics: Metrics, fallback: bool, shadow_fraction: float, harvest: Harvest | None,
                 rule: TeacherFallback = TeacherFallback()):
        """``fallback``: teacher fallback on by default (a request may opt out); ``rule``: the cascade's rule."""
        self.student, self.teacher, self.rule = student, teacher, rule
        self.student_queue, self.teacher_queue, self.metrics = student_queue, teacher_queue, metrics
        self.fallback, self.shadow_fraction, self.harvest = fallback, shadow_fraction, harvest
        self._random = random.Random()  # unseeded: every start (and replica) samples different windows
        self._shadows: set[asyncio.Task] = set()

    def submit(self, audios: list[np.ndarray], language: str | None, options: DecodeOptions,
               fallback: bool | None = None, ticket: Ticket | None = None) -> list[asyncio.Future]:
        """``ticket``: the request's admission; a window that falls back keeps its deadline and is charged to it."""
        futures = self.student_queue.submit(audios, language, options, ticket=ticket)
        use_fallback = self.fallback if fallback is None else fallback
        return [asyncio.ensure_future(self._window(f, a, options, use_fallback, ticket))
                for f, a in zip(futures, audios, strict=True)]

    async def _window(self, future: asyncio.Future, audio: np.ndarray, options: DecodeOptions, fallback: bool,
                      ticket: Ticket | None = None) -> Outcome:
        result, queue_s, inference_s = await future
        if self.rule.wanted(result):
            if fallback:
                return await self._fall_back(result, audio, options, queue_s, inference_s, ticket)
            self._trim(result)
        if self.shadow_fraction and self._random.random() < self.shadow_fraction:
            task = asyncio.create_task(self._shadow(result, audio, options))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)
        return result, queue_s, inference_s

    async def _fall_back(self, result: WindowResult, audio: np.ndarray, options: DecodeOptions, queue_s: float,
                         inference_s: float, ticket: Ticket | None = None) -> Outcome:
        try:
            (teacher_future,) = self.teacher_queue.submit([audio], result.language, self.rule.options(options),
                                                          ticket=ticket)
        except (QueueFullError, ShuttingDownError):
            self._trim(result)
            return result, queue_s, inference_s  # the guarded student's trimmed transcript beats an error
        self.metrics.fallback.labels(self.student, self.teacher, result.flag or "flag").inc()
        redone, teacher_queue_s, teacher_s = await teacher_future
        return self.rule.answer(result, redone), queue_s + teacher_queue_s, inference_s + teacher_s

    def _trim(self, result: WindowResult) -> None:
        """A loop with no teacher to go to (this request opted out, or the teacher is full): cut it back."""
        if self.rule.without_teacher(result):
            self.metrics.guard.labels(self.student, "trimmed").inc()

    async def _shadow(self, result: WindowResult, audio: np.ndarray, options: DecodeOptions) -> None:
        """Teacher decodes the same window in the background; never raises into a request."""
        try:
            (future,) = self.teacher_queue.submit([audio], result.language, options, background=True)
            teacher, _, _ = await future
        except (QueueFullError, ShuttingDownError, asyncio.CancelledError):
            return
        except Exception:  # noqa: BLE001 - shadow work must never affect serving
            log.exception("shadow decode failed")
            return
        from k2d.scoring import mer

        self.metrics.shadow.labels(self.student, self.teacher).observe(mer(teacher.text, result.text))
        if self.harvest is not None:
            await asyncio.to_thread(self.harvest.write, audio, teacher)
            self.metrics.harvested.labels(self.student).inc()


class Harvest:
    """Shadowed windows as a ``k2d run`` corpus: ``harvest.jsonl`` rows {audio, text, language} + FLAC
    files, capped in size (the oldest files are rotated out)."""

    def __init__(self, folder: Path, max_mb: float):
        self.folder, self.max_bytes = folder, int(max_mb * 1e6)
        (self.folder / "audio").mkdir(parents=True, exist_ok=True)
        self.manifest = self.folder / "harvest.jsonl"
        self._count = 0
        # oldest first, with sizes: rotation needs no directory scan per write
        self._files = [(f, f.stat().st_size) for f in sorted((self.folder / "audio").glob("*.flac"))]
        self._bytes = sum(size for _, size in self._files)

    def write(self, audio: np.ndarray, teacher: WindowResult) -> None:
        from k2d.audio import write_audio

        self._count += 1
        name = f"audio/{time.strftime('%Y%m%d-%H%M%S')}-{self._count:06d}.flac"
        path = write_audio(self.folder / name, audio)
        row = {"audio": name, "text": teacher.text, "language": teacher.language}
        with self.manifest.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        size = path.stat().st_size
        self._files.append((path, size))
        self._bytes += size
        self._rotate()

    def _rotate(self) -> None:
        removed = set()
        if self._bytes <= self.max_bytes:
            return
        while self._files and self._bytes > 0.9 * self.max_bytes:  # headroom: no manifest rewrite per write
            oldest, size = self._files.pop(0)
            self._bytes -= size
            oldest.unlink(missing_ok=True)
            removed.add(f"audio/{oldest.name}")
        if removed:
            rows = [line for line in self.manifest.read_text(encoding="utf-8").splitlines()
                    if json.loads(line)["audio"] not in removed]
            tmp = self.manifest.with_suffix(".tmp")
            tmp.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
            tmp.replace(self.manifest)
