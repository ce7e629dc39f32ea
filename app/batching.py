"""Batching across concurrent requests: one queue of windows per model, shared by every request.

A dispatcher task takes the window with the **earliest deadline** (its request's; windows without one, and
windows of one request, in the order they came), waits at most ``max_wait_ms`` for more (default 0: a free
worker starts at once, and windows that queue while every worker is busy form the next batch), and sends
windows *with the same decoding options* to a worker thread as one ``generate`` call, filled in deadline
order. Earliest deadline first is what lets admission control promise a deadline: a request admitted
because the work ahead of it fits before its deadline is never overtaken by one admitted later (a later
arrival has a later deadline), and a burst degrades into answers in time for the requests admitted and
fast refusals for the rest, instead of every request advancing together and all missing their deadline.
Windows with other options wait for their own batch. Results go back to each window's future, so
requests reassemble independently. An engine error fails only the windows of that batch.

**Charged work.** Each call's wall-clock time, shared with the calls running beside it
(:class:`app.costs.BusyClock`, one per service), is charged to the requests whose windows it ran, in
proportion to their cost units: admission control learns from these what requests cost.

**Bounded work per call.** A ``generate`` call cannot be interrupted, so a batch is cut to what fits in
``max_batch_s`` at the model's measured cost (:class:`CostModel`: engine seconds per window, weighted by
beam width and encoder input length), never below one window and never above ``max_batch_size``. When
a client leaves, its queued windows are dropped at once (their futures are cancelled, and cancelled
windows never enter a batch), so what is left of an abandoned request is at most the one short call
already running. The queue is bounded too: a full queue rejects new work (HTTP 429) instead of letting
latency grow without limit.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from app.costs import BusyClock
from app.metrics import Metrics
from app.settings import DEFAULT_MAX_BATCH_S
from k2d.audio import SAMPLE_RATE
from k2d.context import FULL_FRAMES
from k2d.engine import DecodeOptions, WhisperEngine

if TYPE_CHECKING:
    from app.admission import Ticket

COST_WEIGHT = 0.5  # weight of the newest batch in the cost estimate
_order = itertools.count()  # submission order: ties between equal deadlines, windows of one request


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
    honoured: Hashable  # the options its engine honours (Engine.batch_options): with frames, the batch key
    ticket: Ticket | None = None  # the admitted request it belongs to: its deadline, what it is charged
    enqueued: float = field(default_factory=time.monotonic)
    order: int = field(default_factory=lambda: next(_order))

    def key(self) -> tuple:
        return (self.honoured, self.frames)

    @property
    def deadline(self) -> float:
        return self.ticket.deadline if self.ticket is not None else math.inf

    def turn(self) -> tuple[float, int]:
        """Its place in the queue: earliest deadline first, then first come."""
        return self.deadline, self.order

    @property
    def units(self) -> float:
        """Relative engine cost: beam width × the share of a full 30 s encoder input the window gets."""
        return max(1, self.options.beam_size) * self.frames / FULL_FRAMES

    @property
    def live(self) -> bool:
        return not self.future.done()


class CostModel:
    """Engine seconds per cost unit (see :attr:`WindowJob.units`), weighted toward recent batches.

    Measured on the batches actually run, so it includes what batching saves: on a GPU, where a batch
    costs little more than one window, the per-unit cost falls as batches grow, and the batch limit
    rises with it until a call takes about ``max_batch_s``."""

    def __init__(self) -> None:
        self.unit_s: float | None = None
        self.units_per_window = 1.0

    def observe(self, units: float, windows: int, seconds: float) -> None:
        if units <= 0 or windows <= 0:
            return
        per_unit = seconds / units
        if self.unit_s is None:
            self.unit_s, self.units_per_window = per_unit, units / windows
            return
        self.unit_s += COST_WEIGHT * (per_unit - self.unit_s)
        self.units_per_window += COST_WEIGHT * (units / windows - self.units_per_window)

    @property
    def seconds_per_window(self) -> float:
        """Engine seconds of an average window of the traffic so far (0 while nothing has run)."""
        return (self.unit_s or 0.0) * self.units_per_window


class BatchScheduler:
    def __init__(self, name: str, engine: WhisperEngine, metrics: Metrics, max_batch_size: int, max_wait_ms: float,
                 max_queue: int, max_batch_s: float = DEFAULT_MAX_BATCH_S, clock: BusyClock | None = None):
        self.name, self.engine, self.metrics = name, engine, metrics
        self.clock = clock or BusyClock()  # shared by every model's scheduler: they share the machine
        self.max_batch, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self.max_batch_s = max_batch_s
        self.cost = CostModel()
        self.pending: deque[WindowJob] = deque()
        self.background: deque[WindowJob] = deque()  # shadow work: runs only when no foreground window waits
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(engine.workers)
        self._executor = ThreadPoolExecutor(max_workers=engine.workers, thread_name_prefix=f"k2d-{name}")
        self._running: set[asyncio.Task] = set()
        self._dispatcher: asyncio.Task | None = None
        self._swept = False
        self.accepting = True

    def start(self) -> None:
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"dispatch-{self.name}")

    @property
    def queued_windows(self) -> int:
        """Windows waiting whose request still wants them (a cancelled window is not work)."""
        return sum(1 for job in self.pending if job.live)

    @property
    def queued_audio_s(self) -> float:
        """Seconds of audio waiting in the queue: what admission control weighs, not the window count."""
        return sum(len(job.audio) for job in self.pending if job.live) / SAMPLE_RATE

    @property
    def seconds_per_window(self) -> float:
        """Measured engine seconds per window (0 until a batch has run)."""
        return self.cost.seconds_per_window

    def backlog_s(self, extra_windows: int = 0) -> float:
        """Expected seconds until every queued window (and ``extra_windows`` average ones) has run."""
        if self.cost.unit_s is None:
            return 0.0
        units = sum(job.units for job in self.pending if job.live) + extra_windows * self.cost.units_per_window
        return units * self.cost.unit_s / self.engine.workers

    def batch_limit(self, lead: WindowJob) -> int:
        """Windows like ``lead`` that one call may take: what fits in ``max_batch_s`` at the measured cost;
        one while the cost is unknown (that first call measures it)."""
        if self.max_batch_s <= 0:
            return self.max_batch
        if self.cost.unit_s is None:
            return 1
        fits = int(self.max_batch_s / max(self.cost.unit_s * lead.units, 1e-9))
        return max(1, min(self.max_batch, fits))

    @property
    def alive(self) -> bool:
        return self._dispatcher is not None and not self._dispatcher.done()

    def submit(self, windows: list[np.ndarray], language: str | None, options: DecodeOptions,
               background: bool = False, ticket: Ticket | None = None) -> list[asyncio.Future]:
        """Queue all windows of one request at once (all or none, so a request is never half-queued).

        ``ticket``: the admitted request they belong to (its deadline orders them; they are charged to it).
        ``background`` windows (shadow scoring) wait in their own lane, taken only when no foreground
        window is queued, and are bounded separately: shadow work never delays or rejects a request."""
        if not self.accepting:
            raise ShuttingDownError("the service is shutting down")
        lane = self.background if background else self.pending
        queued = sum(1 for job in lane if job.live)
        if queued + len(windows) > self.max_queue:
            raise QueueFullError(f"model {self.name!r} has {queued} windows queued (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        honoured = self.engine.batch_options(options)
        jobs = [WindowJob(w, language, options, loop.create_future(), self.engine.frames(w), honoured, ticket)
                for w in windows]
        for job in jobs:
            job.future.add_done_callback(self._on_done)
        lane.extend(jobs)
        self.metrics.queue_depth.labels(self.name).set(len(self.pending))
        self._wakeup.set()
        return [job.future for job in jobs]

    def _on_done(self, future: asyncio.Future) -> None:
        """A cancelled window leaves the queue at once: the first cancellation of a loop turn sweeps every
        window cancelled so far (a whole abandoned request in one pass), later ones in the turn skip."""
        if future.cancelled() and not self._swept:
            self._swept = True
            self._purge()
            asyncio.get_running_loop().call_soon(self._end_sweep)

    def _end_sweep(self) -> None:
        self._swept = False

    def _purge(self) -> None:
        for lane in (self.pending, self.background):
            if any(not job.live for job in lane):
                kept = [job for job in lane if job.live]
                lane.clear()
                lane.extend(kept)
        self.metrics.queue_depth.labels(self.name).set(len(self.pending))

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
            while (self.pending and len(self.pending) < self.batch_limit(self.pending[0])
                   and (delay := deadline - time.monotonic()) > 0):
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                except TimeoutError:
                    break
            await self._slots.acquire()
            self._launch(self._take_batch(self.pending))  # formed now: windows cancelled while waiting stay out

    def _launch(self, batch: list[WindowJob]) -> None:
        task = asyncio.create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _take_batch(self, lane: deque[WindowJob]) -> list[WindowJob]:
        """The window with the earliest deadline leads: its options and bucket decide the batch, and
        compatible windows join it in deadline order, up to :meth:`batch_limit`."""
        live = sorted((job for job in lane if job.live), key=WindowJob.turn)
        if not live:
            lane.clear()
            return []
        lead = live[0]
        key, limit = lead.key(), self.batch_limit(lead)
        batch = [job for job in live if job.key() == key][:limit]
        taken = {id(job) for job in batch}
        lane.clear()
        lane.extend(job for job in live if id(job) not in taken)
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
            token = self.clock.start()
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
            finally:
                self._charge(batch, self.clock.stop(token))  # before any result: a finished request has its charge
            elapsed = time.monotonic() - started
            self.cost.observe(sum(j.units for j in batch), len(batch), elapsed)
            audio_s = sum(len(j.audio) for j in batch) / SAMPLE_RATE
            self.metrics.record_batch(self.name, len(batch), audio_s, elapsed, sum(r.tokens for r in results))
            for result in results:
                for reason in result.triggered:
                    self.metrics.guard.labels(self.name, reason).inc()
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result((result, started - job.enqueued, elapsed))
        finally:
            self._slots.release()

    @staticmethod
    def _charge(batch: list[WindowJob], seconds: float) -> None:
        """A call's compute seconds, shared among its windows' requests by their cost units."""
        units = sum(job.units for job in batch)
        for job in batch:
            if job.ticket is not None and units > 0:
                job.ticket.charge(seconds * job.units / units)

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
