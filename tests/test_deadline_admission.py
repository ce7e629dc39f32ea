"""Deadline-aware admission without models: the cost estimate (learned from charged compute, teacher fallback
included, the context the model runs at), the admission decision and its Retry-After."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from app.admission import HEADROOM, Admission
from app.costs import PRIOR_CPU, BusyClock, CostEstimator, frames_of, nominal_s, planned_windows
from app.errors import OverloadedError
from app.metrics import Metrics
from app.settings import Settings
from k2d.context import ContextPolicy

WHISPER, SHORT = ContextPolicy(), ContextPolicy(pad_s=1.0, bucket_s=1.0)  # 30 s a window; audio + 1 s


class StandInScheduler:
    """What admission reads of a model's queue."""

    max_queue = 256
    queued_windows = 0
    queued_audio_s = 0.0

    def __init__(self, policy: ContextPolicy = WHISPER):
        self.engine = SimpleNamespace(policy=policy)


def model(policy: ContextPolicy = WHISPER, parameters: int = 75_000_000, max_window_s: float = 30.0):
    return SimpleNamespace(scheduler=StandInScheduler(policy), max_window_s=max_window_s,
                           entry=SimpleNamespace(parameters=parameters))


def admission(**settings) -> Admission:
    return Admission(Settings(device="cpu", **settings), Metrics())


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_calls_running_together_share_the_wall_clock():
    now = FakeClock()
    clock = BusyClock(now)
    a = clock.start()
    now.t = 2.0  # a alone for 2 s
    b = clock.start()
    now.t = 4.0  # a and b together for 2 s: 1 s each
    assert clock.stop(a) == pytest.approx(3.0)
    now.t = 5.0  # b alone for 1 s
    assert clock.stop(b) == pytest.approx(2.0)  # 3 + 2 = 5 s charged for 5 s of a busy machine
    now.t = 9.0  # idle: nothing charged
    c = clock.start()
    now.t = 10.0
    assert clock.stop(c) == pytest.approx(1.0)


def test_nominal_seconds_count_the_context_each_model_runs_at():
    whisper, short = frames_of(SimpleNamespace(policy=WHISPER)), frames_of(SimpleNamespace(policy=SHORT))
    assert nominal_s([3.0], whisper) == pytest.approx(33.0)  # a 3 s clip pays for Whisper's 30 s encoder input
    assert nominal_s([3.0], short) == pytest.approx(7.0)  # the student's encoder reads 3 s + 1 s
    assert planned_windows(60.0, 30.0) == [30.0, 30.0] and planned_windows(61.0, 30.0) == pytest.approx([61 / 3] * 3)
    assert planned_windows(0.0, 30.0) == []
    assert nominal_s(planned_windows(60.0, 30.0), whisper) == pytest.approx(120.0)
    assert nominal_s(planned_windows(60.0, 12.0), short) == pytest.approx(60 + 5 * 13)  # 12 s windows + 1 s each


def test_the_estimate_starts_from_a_prior_and_follows_measured_costs():
    costs = CostEstimator(PRIOR_CPU, weight=0.5)
    costs.declare("base", 72_600_000)
    costs.declare("tiny", 37_800_000)
    assert costs.ratio("base") == pytest.approx(PRIOR_CPU * 72.6) and not costs.measured("base")
    assert costs.ratio("tiny") < costs.ratio("base")  # before any measurement: cost follows the parameters
    costs.observe("base", nominal=120.0, compute=6.0)  # the first request replaces the prior outright
    assert costs.ratio("base") == pytest.approx(0.05) and costs.measured("base")
    costs.observe("base", nominal=120.0, compute=18.0)  # its teacher re-decoded half its windows: dearer
    assert costs.ratio("base") == pytest.approx((0.5 * 6 + 0.5 * 18) / 120)
    # requests that cost 0.05 and 0.15 per nominal second: the estimate errs dear by their spread (0.05)
    assert costs.margin("base") == pytest.approx(0.05)
    assert costs.estimate("base", 60.0) == pytest.approx(60 * (0.1 + 0.05))
    costs.observe("base", nominal=0.0, compute=1.0)  # nothing to weigh it by: ignored
    costs.observe("base", nominal=10.0, compute=float("nan"))
    assert costs.ratio("base") == pytest.approx(0.1)


def test_requests_that_cost_alike_leave_no_margin_and_requests_that_vary_are_estimated_dear():
    steady, varied = CostEstimator(PRIOR_CPU), CostEstimator(PRIOR_CPU)
    for compute in (10.0, 10.0, 10.0, 10.0):
        steady.observe("m", nominal=100.0, compute=compute)
    for compute in (5.0, 15.0, 5.0, 15.0):  # about the same mean: every other request paid for a fallback
        varied.observe("m", nominal=100.0, compute=compute)
    assert steady.margin("m") == 0.0 and steady.estimate("m", 100.0) == pytest.approx(10.0)
    assert varied.ratio("m") == pytest.approx(steady.ratio("m"), rel=0.25)
    assert varied.estimate("m", 100.0) > steady.estimate("m", 100.0) + 2.0  # one spread (~0.047 per s) dearer


def test_a_request_is_admitted_only_if_it_finishes_before_its_deadline():
    gate = admission(request_timeout_s=100)
    m = model()
    gate.costs.declare("m", 75_000_000)
    gate.costs.observe("m", nominal=120.0, compute=12.0)  # a 60 s upload (120 nominal s) costs 12 s
    deadline = time.monotonic() + 100
    tickets = []
    with pytest.raises(OverloadedError) as refused:
        for i in range(16):
            tickets.append(gate.admit("m", m, 60.0, deadline + i * 0.001))
    fit = int(HEADROOM * 100 // 12)  # 85 s of room for 12 s requests: 7
    assert len(tickets) == fit and gate.work_ahead(deadline + 1) == pytest.approx(12.0 * fit)
    # Retry-After: when enough of the 84 s ahead will have run for 12 s more to fit in 85 s (11 s): once the first
    # request ahead has left, after 12 s — not 60, not 1
    assert 12.0 * fit + 12 - HEADROOM * 100 == pytest.approx(11.0)
    assert refused.value.retry_after == 12
    assert "deadline" in str(refused.value)
    tickets[0].close()  # one finished: the next request fits again
    tickets.append(gate.admit("m", m, 60.0, deadline + 1))
    assert len(gate.tickets) == fit


def test_only_work_with_an_earlier_deadline_is_ahead():
    gate = admission()
    m = model()
    gate.costs.declare("m", 75_000_000)
    gate.costs.observe("m", nominal=120.0, compute=12.0)
    now = time.monotonic()
    gate.admit("m", m, 60.0, now + 200)  # due later: the earliest-deadline-first queues serve it after
    assert gate.work_ahead(now + 100) == 0
    gate.admit("m", m, 60.0, now + 20)  # nothing ahead of it
    assert gate.work_ahead(now + 100) == pytest.approx(12.0)


def test_with_nothing_ahead_a_request_is_admitted_even_if_it_may_not_fit():
    gate = admission()
    m = model()
    gate.costs.declare("m", 75_000_000)
    gate.costs.observe("m", nominal=120.0, compute=12.0)
    long = gate.admit("m", m, 600.0, time.monotonic() + 30)  # ~120 s of work, 30 s left: nothing else would ever fit
    with pytest.raises(OverloadedError) as refused:
        gate.admit("m", m, 600.0, time.monotonic() + 30)
    assert refused.value.retry_after == pytest.approx(long.remaining, abs=1.01)  # once the machine is idle again


def test_teacher_and_student_share_the_machine_so_both_count_as_work_ahead():
    gate = admission()
    student, teacher = model(SHORT), model()
    for name in ("student", "teacher"):
        gate.costs.declare(name, 75_000_000)
        gate.costs.observe(name, nominal=100.0, compute=10.0)
    now = time.monotonic()
    gate.admit("teacher", teacher, 30.0, now + 100)  # 60 nominal s: 6 s
    gate.admit("student", student, 20.0, now + 100.5)  # 20 + 21 nominal s: 4.1 s
    assert gate.work_ahead(now + 101) == pytest.approx(6.0 + 4.1)


def test_a_finished_request_teaches_the_estimate_its_teacher_fallback_included():
    async def scenario():
        gate = admission()
        m = model()
        ticket = gate.admit("m", m, 60.0, time.monotonic() + 100)
        assert ticket.remaining == pytest.approx(gate.costs.prior("m") * 120)  # the prior, before any measurement
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(3)]  # VAD cut it into 3 windows
        ticket.queued(futures, nominal=150.0)
        ticket.charge(2.0)  # the student's windows
        futures[0].set_result(None)
        futures[1].set_result(None)
        await asyncio.sleep(0)
        assert ticket.remaining == pytest.approx(gate.costs.prior("m") * 150 / 3)  # one window of three left
        ticket.charge(7.0)  # its last window looped and its teacher re-decoded it
        futures[2].set_result(None)
        await asyncio.sleep(0)
        assert not gate.tickets and gate.costs.ratio("m") == pytest.approx(9.0 / 150)
        abandoned = gate.admit("m", m, 60.0, time.monotonic() + 100)
        futures = [loop.create_future()]
        abandoned.queued(futures, nominal=60.0)
        abandoned.charge(100.0)
        futures[0].cancel()
        await asyncio.sleep(0)
        assert not gate.tickets and gate.costs.ratio("m") == pytest.approx(9.0 / 150)  # a cancelled request teaches nothing
        silent = gate.admit("m", m, 10.0, time.monotonic() + 100)
        silent.queued([], nominal=0.0)  # no speech: no window ever queued
        assert not gate.tickets
        gate.close()

    asyncio.run(scenario())


def test_the_queue_bounds_still_hold_with_a_retry_after_from_the_work_ahead():
    gate = admission(max_queue_audio_s=100)
    m = model()
    gate.costs.declare("m", 75_000_000)
    gate.costs.observe("m", nominal=120.0, compute=1.0)  # cheap: the deadline is no bound here
    now = time.monotonic()
    gate.admit("m", m, 60.0, now + 100)
    with pytest.raises(OverloadedError, match="audio waiting") as refused:
        gate.admit("m", m, 60.0, now + 101)
    assert refused.value.retry_after == 1  # 20 of 60 s must drain: a third of ~1 s of work
    m.scheduler.queued_windows, m.scheduler.max_queue = 4, 4
    with pytest.raises(OverloadedError, match="windows queued"):
        gate.precheck("m", m, now + 101)


def test_work_leaves_window_by_window_so_retry_after_waits_for_the_window_that_frees_enough():
    async def scenario():
        gate = admission()
        m = model()
        gate.costs.declare("m", 75_000_000)
        gate.costs.observe("m", nominal=120.0, compute=12.0)  # 0.1 compute s per nominal s
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        for offset in (1, 2):
            ticket = gate.admit("m", m, 60.0, now + 100 + offset)
            ticket.queued([loop.create_future() for _ in range(2)], nominal=120.0)  # two windows of 6 s
        assert gate.drain_s(0.5) == pytest.approx(6.0)  # a little is free only once the first window is done
        assert gate.drain_s(7.0) == pytest.approx(12.0)
        assert gate.drain_s(100.0) == pytest.approx(24.0)  # all of it
        assert gate.drain_s(0.0) == 0.0
        gate.close()

    asyncio.run(scenario())


def test_a_plan_from_the_declared_duration_learns_how_many_windows_vad_really_cuts():
    async def scenario():
        gate = admission()
        m = model()
        gate.costs.declare("m", 75_000_000)
        gate.costs.observe("m", nominal=150.0, compute=15.0)  # 0.1 compute s per nominal s
        ticket = gate.admit("m", m, 60.0, time.monotonic() + 100)
        assert ticket.estimate == pytest.approx(12.0)  # planned: two 30 s windows, 120 nominal s
        ticket.queued([asyncio.get_running_loop().create_future() for _ in range(3)], nominal=150.0)  # VAD cut three
        assert ticket.estimate == pytest.approx(15.0)
        ticket.close()
        assert gate.admit("m", m, 60.0, time.monotonic() + 100).estimate == pytest.approx(15.0)  # the plan learnt it
        gate.costs.observe_plan("m", planned=600.0, cut=60.0)  # a size-guessed duration far too long
        assert gate.estimate("m", m, 60.0)[1] >= 12.0  # never below the plan itself
        gate.close()

    asyncio.run(scenario())


def test_at_a_cold_start_a_refusal_on_the_prior_waits_for_the_first_measurement():
    async def scenario():
        gate = admission()
        m = model()
        now = time.monotonic()
        first = await gate.admit_measured("m", m, 60.0, now + 40)  # nothing ahead: admitted
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(2)]
        first.queued(futures, nominal=120.0)
        assert first.estimate > 12.0  # the prior (0.15 per nominal second): ~18 s
        gate.precheck("m", m, now + 40)  # on a prior alone, the early check refuses nothing the bounds allow
        with pytest.raises(OverloadedError):
            gate.admit("m", m, 60.0, now + 40.1)  # 18 + 18 s do not fit in 85 % of 40 s
        waiting = asyncio.ensure_future(gate.admit_measured("m", m, 60.0, now + 40.1))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # it waits for a measurement instead of refusing on the prior
        first.charge(6.0)
        for future in futures:
            future.set_result(None)  # the first request cost 6 s: 0.05 per nominal second
        second = await asyncio.wait_for(waiting, 1)
        assert second.estimate == pytest.approx(6.0) and not gate.guessing("m")
        with pytest.raises(OverloadedError):  # measured now: a refusal is at once, however long it may wait
            await asyncio.wait_for(gate.admit_measured("m", m, 600.0, now + 40.2), 0.5)
        gate.close()

    asyncio.run(scenario())
