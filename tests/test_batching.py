"""The batch scheduler's safety rules, on a stand-in engine (no model): each engine call's work is bounded
by the measured cost, cancelled windows never reach the engine, and the earliest deadline goes first."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.batching import BatchScheduler, CostModel, WindowJob
from app.metrics import Metrics
from k2d.context import FULL_FRAMES
from k2d.engine import DecodeOptions, WindowResult

BEAM5, BEAM1 = DecodeOptions(beam_size=5), DecodeOptions(beam_size=1)


class StandInEngine:
    """Records every call; each window is a constant array whose value names it; ``seconds`` per window."""

    workers = 1

    def __init__(self, seconds: float = 0.0, frames: int = FULL_FRAMES):
        self.calls: list[list[int]] = []
        self.seconds, self._frames = seconds, frames
        self.release = threading.Event()
        self.release.set()

    def frames(self, window: np.ndarray) -> int:
        return self._frames

    def batch_options(self, options: DecodeOptions) -> tuple:
        return options.key()  # like Whisper: every option counts

    def transcribe_batch(self, windows, languages, options) -> list[WindowResult]:
        self.calls.append([int(w[0]) for w in windows])
        self.release.wait(10)
        time.sleep(self.seconds * len(windows))
        return [WindowResult("en", [], 1) for _ in windows]


def windows(*tags: int) -> list[np.ndarray]:
    return [np.full(16000, tag, np.float32) for tag in tags]


def scheduler(engine: StandInEngine, max_batch: int = 8, max_batch_s: float = 2.0, wait_ms: float = 0) -> BatchScheduler:
    return BatchScheduler("m", engine, Metrics(), max_batch, wait_ms, 256, max_batch_s)


def job(options: DecodeOptions, frames: int = FULL_FRAMES) -> WindowJob:
    return WindowJob(np.zeros(16000, np.float32), "en", options, asyncio.Future(loop=asyncio.new_event_loop()), frames,
                     options.key())


def test_the_batch_limit_follows_the_measured_cost_beam_and_context():
    sched = scheduler(StandInEngine(), max_batch=8, max_batch_s=2.0)
    assert sched.batch_limit(job(BEAM5)) == 1  # cost unknown: one window measures it
    sched.cost.observe(units=5 * 2, windows=2, seconds=1.0)  # two beam-5 30 s windows took 1 s: 0.1 s a unit
    assert sched.seconds_per_window == pytest.approx(0.5)
    assert sched.batch_limit(job(BEAM5)) == 4  # 0.5 s a window, 2 s a call
    assert sched.batch_limit(job(BEAM1)) == 8  # 0.1 s a window: max_batch_size decides
    assert sched.batch_limit(job(BEAM5, FULL_FRAMES // 3)) == 8  # a short-context window costs a third
    sched.max_batch_s = 0.2
    assert sched.batch_limit(job(BEAM5)) == 1  # never below one window
    sched.max_batch_s = 0
    assert sched.batch_limit(job(BEAM5)) == 8  # 0: max_batch_size alone


def test_the_cost_estimate_follows_recent_batches():
    cost = CostModel()
    cost.observe(units=5, windows=1, seconds=1.0)
    for _ in range(10):
        cost.observe(units=10, windows=2, seconds=0.5)  # batching got cheaper per window (as on a GPU)
    assert cost.unit_s == pytest.approx(0.05, rel=0.01)
    cost.observe(units=0, windows=0, seconds=1.0)  # nothing ran: nothing learnt
    assert cost.unit_s == pytest.approx(0.05, rel=0.01)


def test_each_engine_call_stays_within_the_cost_bound():
    engine = StandInEngine(seconds=0.02)

    async def scenario():
        sched = scheduler(engine, max_batch=8, max_batch_s=0.1)  # ~5 windows of 0.02 s fit in a call
        sched.start()
        futures = sched.submit(windows(*range(24)), "en", BEAM5)
        await asyncio.gather(*futures)
        return sched

    sched = asyncio.run(scenario())
    sizes = [len(call) for call in engine.calls]
    assert sizes[0] == 1 and sum(sizes) == 24
    assert max(sizes) <= 5 and max(sizes[1:]) > 1  # bounded by the cost, still batched
    unbounded = StandInEngine(seconds=0.02)

    async def without_bound():
        sched = scheduler(unbounded, max_batch=8, max_batch_s=0)
        sched.start()
        await asyncio.gather(*sched.submit(windows(*range(24)), "en", BEAM5))

    asyncio.run(without_bound())
    assert [len(call) for call in unbounded.calls] == [8, 8, 8]
    assert sched.seconds_per_window > 0


def test_cancelled_windows_leave_the_queue_at_once_and_never_reach_the_engine():
    engine = StandInEngine()

    async def scenario():
        sched = scheduler(engine, max_batch=2, max_batch_s=0)
        sched.start()
        engine.release.clear()  # the first call blocks: everything else waits in the queue
        first = sched.submit(windows(1), "en", BEAM5)
        await asyncio.sleep(0.05)
        abandoned = sched.submit(windows(10, 11, 12, 13), "en", BEAM5)
        kept = sched.submit(windows(20, 21), "en", BEAM5)
        assert sched.queued_windows == 6 and sched.queued_audio_s == 6
        for future in abandoned:
            future.cancel()
        await asyncio.sleep(0)  # one loop turn: the sweep runs
        assert len(sched.pending) == 2 and sched.queued_audio_s == 2
        engine.release.set()
        await asyncio.gather(*first, *kept)
        assert not sched.pending  # nothing left behind for the cancelled request

    asyncio.run(scenario())
    assert engine.calls == [[1], [20, 21]]


class HeadLikeEngine(StandInEngine):
    """Honours only word timestamps, as a CTC / transducer head does (no beam to search)."""

    def batch_options(self, options: DecodeOptions):
        from k2d.ctc_engine import HeadDecodeOptions

        return HeadDecodeOptions(options.word_timestamps)


@pytest.mark.parametrize(("engine", "calls"), [(StandInEngine(), [[1], [2, 4], [3]]),
                                               (HeadLikeEngine(), [[1], [2, 3, 4]])])
def test_windows_share_a_call_when_they_differ_only_in_options_their_engine_ignores(engine, calls):
    """Issue 31: CTC batches were keyed by Whisper's options, so requests asking for other beams never shared a
    CTC call although a head has no beam. The engine says what it honours; that keys the batch."""

    async def scenario():
        sched = scheduler(engine, max_batch=8, max_batch_s=0)
        sched.start()
        engine.release.clear()  # the first call blocks while the rest queue
        first = sched.submit(windows(1), "en", BEAM5)
        await asyncio.sleep(0.05)
        rest = [*sched.submit(windows(2), "en", BEAM5), *sched.submit(windows(3), "en", BEAM1),
                *sched.submit(windows(4), "en", BEAM5)]
        engine.release.set()
        await asyncio.gather(*first, *rest)

    engine.calls.clear()
    asyncio.run(scenario())
    assert engine.calls == calls


class Due:
    """What the scheduler reads of an admitted request: its deadline, and the compute seconds it is charged."""

    def __init__(self, deadline: float):
        self.deadline, self.spent = deadline, 0.0

    def charge(self, seconds: float) -> None:
        self.spent += seconds


def test_the_earliest_deadline_goes_first_whatever_came_first():
    engine = StandInEngine()
    soon, later, latest = Due(10.0), Due(20.0), Due(30.0)

    async def scenario():
        sched = scheduler(engine, max_batch=2, max_batch_s=0)
        sched.start()
        engine.release.clear()
        busy = sched.submit(windows(0), "en", BEAM5, ticket=latest)
        await asyncio.sleep(0.05)
        late = sched.submit(windows(*range(300, 303)), "en", BEAM5, ticket=latest)  # queued first, due last
        mid = sched.submit(windows(200, 201), "en", BEAM5, ticket=later)
        first = sched.submit(windows(100, 101, 102), "en", BEAM5, ticket=soon)  # queued last, due first
        other = sched.submit(windows(150), "en", BEAM1, ticket=soon)  # other options: a batch of its own, in turn
        untimed = sched.submit(windows(400), "en", BEAM5)  # no deadline: after every window that has one
        engine.release.set()
        await asyncio.gather(*busy, *late, *mid, *first, *other, *untimed)

    asyncio.run(scenario())
    calls = engine.calls[1:]
    # the earliest deadline's windows in order, a batch filled up in deadline order, then its other options
    assert calls[:3] == [[100, 101], [102, 200], [150]]
    assert calls[3:] == [[201, 300], [301, 302], [400]]
    assert soon.spent > 0 and later.spent > 0 and latest.spent > 0  # every call is charged to its requests


def test_a_call_is_charged_to_its_requests_by_their_share_of_it():
    engine = StandInEngine(seconds=0.05)
    one, two = Due(1.0), Due(2.0)

    async def scenario():
        sched = scheduler(engine, max_batch=4, max_batch_s=0)
        sched.start()
        engine.release.clear()
        futures = sched.submit(windows(1), "en", BEAM5, ticket=one) + sched.submit(windows(2, 3), "en", BEAM5, ticket=two)
        engine.release.set()
        await asyncio.gather(*futures)

    asyncio.run(scenario())
    assert engine.calls == [[1, 2, 3]]
    assert two.spent == pytest.approx(2 * one.spent) and one.spent + two.spent == pytest.approx(0.15, abs=0.1)
