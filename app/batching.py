"""Batching across concurrent requests: one queue of windows per model, shared by every request.

A dispatcher task takes the oldest window, waits at most ``max_wait_ms`` for more, and sends up
to ``max_batch_size`` windows *with the same decoding options* to a worker thread as one
``generate`` call; windows with other options wait for their own batch. Results go back to each
window's future, so requests reassemble independently. An engine error fails only the windows of
that batch. The queue is bounded: a full queue rejects new work (HTTP 429) instead of letting
latency grow without limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app.metrics import Metrics
from k2d.engine import DecodeOptions, WhisperEngine


class QueueFullError(RuntimeError):
    """The model's queue holds ``max_queue_windows`` already."""


class ShuttingDownError(RuntimeError):
    """The service is draining and accepts no new work."""


class EngineError(RuntimeError):
    """The engine failed on a batch; only that batch's requests fail."""


@dataclass
class WindowJob:
    audio: np.ndarray
    language: str | None
    options: DecodeOptions
    future: asyncio.Future
    frames: int  # the model's context policy: windows of one bucket share a batch (same feature shape)
    enqueued: float = field(default_factory=time.monotonic)

    def key(self) -> tuple:
        return (*self.options.key(), self.frames)


class BatchScheduler:
    def __init__(self, name: str, engine: WhisperEngine, metrics: Metrics, max_batch_size: int, max_wait_ms: float,
                 max_queue: int):
        self.name, self.engine, self.metrics = name, engine, metrics
        self.max_batch, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self.pending: deque[WindowJob] = deque()
        self.background: deque[WindowJob] = deque()  # shadow work: runs only when no foreground window waits
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(engine.workers)
        self._executor = ThreadPoolExecutor(max_workers=engine.workers, thread_name_prefix=f"k2d-{name}")
        self._running: set[asyncio.Task] = set()
        self._dispatcher: asyncio.Task | None = None
        self.accepting = True

    def start(self) -> None:
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"dispatch-{self.name}")

    @property
    def queued_audio_s(self) -> float:
        """Seconds of audio waiting in the queue: what admission control weighs, not the window count."""
        return sum(len(job.audio) for job in self.pending) / 16000

    @property
    def alive(self) -> bool:
        return self._dispatcher is not None and not self._dispatcher.done()

    def submit(self, windows: list[np.ndarray], language: str | None, options: DecodeOptions,
               background: bool = False) -> list[asyncio.Future]:
        """Queue all windows of one request at once (all or none, so a request is never half-queued).

        ``background`` windows (shadow scoring) wait in their own lane, taken only when no foreground
        window is queued, and are bounded separately: shadow work never delays or rejects a request."""
        if not self.accepting:
            raise ShuttingDownError("the service is shutting down")
        lane = self.background if background else self.pending
        if len(lane) + len(windows) > self.max_queue:
            raise QueueFullError(f"model {self.name!r} has {len(lane)} windows queued (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        jobs = [WindowJob(w, language, options, loop.create_future(), self.engine.frames(w)) for w in windows]
        lane.extend(jobs)
        self.metrics.queue_depth.labels(self.name).set(len(self.pending))
        self._wakeup.set()
        return [job.future for job in jobs]

    async def _dispatch(self) -> None:
        while True:
            if not self.pending and self.background:
                await self._slots.acquire()
                self._launch(self._take_batch(self.background))
                continue
            if not self.pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self.pending[0].enqueued + self.max_wait
            while len(self.pending) < self.max_batch and (delay := deadline - time.monotonic()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                except TimeoutError:
                    break
            await self._slots.acquire()
            self._launch(self._take_batch(self.pending))

    def _launch(self, batch: list[WindowJob]) -> None:
        task = asyncio.create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _take_batch(self, lane: deque[WindowJob]) -> list[WindowJob]:
        """The oldest window's options and bucket decide; compatible windows join in arrival order."""
        while lane and lane[0].future.cancelled():
            lane.popleft()
        if not lane:
            return []
        key = lane[0].key()
        batch, rest = [], deque()
        while lane:
            job = lane.popleft()
            if job.future.cancelled():
                continue
            (batch if job.key() == key and len(batch) < self.max_batch else rest).append(job)
        lane.extend(rest)
        self.metrics.queue_depth.labels(self.name).set(len(self.pending))
        return batch

    async def _run(self, batch: list[WindowJob]) -> None:
        try:
            if not batch:
                return
            started = time.monotonic()
            for job in batch:
                self.metrics.queue_seconds.labels(self.name).observe(started - job.enqueued)
            loop = asyncio.get_running_loop()
            try:
                results = await loop.run_in_executor(
                    self._executor, self.engine.transcribe_batch, [j.audio for j in batch], [j.language for j in batch],
                    batch[0].options,
                )
            except Exception as err:  # noqa: BLE001 - any engine failure fails this batch only
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(EngineError(f"inference failed: {err}"))
                return
            elapsed = time.monotonic() - started
            audio_s = sum(len(j.audio) for j in batch) / 16000
            self.metrics.record_batch(self.name, len(batch), audio_s, elapsed, sum(r.tokens for r in results))
            for result in results:
                for reason in result.triggered:
                    self.metrics.guard.labels(self.name, reason).inc()
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result((result, started - job.enqueued, elapsed))
        finally:
            self._slots.release()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let queued and running batches finish (bounded by ``timeout``)."""
        self.accepting = False
        end = time.monotonic() + timeout
        self.background.clear()  # shadow work is optional; never let it hold a shutdown
        while (self.pending or self._running) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        if self._dispatcher:
            self._dispatcher.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

