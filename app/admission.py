"""Admission control and the decode cap: admit only what can finish before its deadline, refuse early and cheaply.

Every admitted request holds a :class:`Ticket`: its deadline, its estimated cost in compute seconds
(:mod:`app.costs`: learned per model from what finished requests really cost, teacher fallback included)
and what it has been charged so far. A request is admitted only if the work admitted ahead of it (every
ticket whose deadline is not later than its own) plus its own estimate fits in ``HEADROOM`` of the time
its deadline leaves; the schedulers serve the earliest deadline first, so admitting it delays no one
admitted before it. Otherwise the answer is 429 with a ``Retry-After`` computed from that work: the
seconds until enough of it will have run for this request to fit. With nothing admitted ahead, a request
is always admitted (refusing it could never end, however long the client waited). A refusal made on the
prior alone (no request of the models involved measured yet: a burst on a cold server) waits instead, at
most ``COLD_WAIT`` of the request's time, for the first measurement, and is decided on that.

Twice: from the request's headers alone, as soon as it arrives, if the model cannot take even a *typical*
request (:class:`EarlyRefusal`, nothing of the upload read), then with the duration the file's header
declares. ``K2D_MAX_QUEUE_AUDIO_S`` and ``K2D_MAX_QUEUE_WINDOWS`` still bound each model's queue. Decoding
and VAD run in threads, at most ``K2D_MAX_CONCURRENT_DECODES`` at once, each slot held until its thread
really ends (a cancelled request's thread is told to stop, but still counts until it has).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.costs import PRIOR_CPU, PRIOR_GPU, CostEstimator, frames_of, nominal_s, planned_windows, weighted_update
from app.dependencies import key_matches
from app.errors import OverloadedError, send_error
from app.lifecycle import DEADLINE_KEY
from app.metrics import Metrics
from app.model_manager import ModelManager, ServedModel
from app.settings import Settings
from k2d.windows import MAX_WINDOW_S

T = TypeVar("T")
TYPICAL_WEIGHT = 0.1  # weight of the newest request in a model's typical request length
HEADROOM = 0.85  # share of a request's remaining time the work ahead of it and its own estimate may fill
COLD_WAIT = 0.15  # share of its remaining time a request refused on the prior alone waits for a measurement


class Ticket:
    """One admitted request: its deadline (its windows' place in every queue they reach), its estimated
    cost, and the compute seconds its windows have been charged (teacher fallback included)."""

    def __init__(self, admission: Admission, model: str, deadline: float, audio_s: float, nominal: float):
        self.admission, self.model, self.deadline = admission, model, deadline
        self.audio_s = audio_s  # declared audio, held against the model's audio bound until its windows queue
        self.planned = self.nominal = nominal  # planned from the declared duration until the upload is cut
        self.spent = 0.0
        self.windows: int | None = None  # unknown until the upload is decoded and cut
        self.left = 0
        self.failed = False

    def charge(self, seconds: float) -> None:
        """Compute seconds one of its windows was charged (called by the model's scheduler)."""
        self.spent += seconds

    @property
    def estimate(self) -> float:
        """Its whole cost in compute seconds at what the model's requests cost *now*: as the estimate learns
        (a cold start's prior replaced by a measurement), the work admitted is re-estimated with it."""
        costs = self.admission.costs
        nominal = self.nominal if self.windows is not None else costs.planned(self.model, self.planned)
        return costs.estimate(self.model, nominal)

    @property
    def remaining(self) -> float:
        """Estimated compute seconds still to run: all of it until queued, then the unfinished windows' share."""
        if self.windows is None:
            return self.estimate
        return self.estimate * self.left / self.windows if self.windows else 0.0

    def queued(self, futures: list[asyncio.Future], nominal: float) -> None:
        """Its windows are queued: the estimate is redone from the windows themselves (their count and
        context), and the request is learnt from once every window has its final transcript."""
        self.windows = self.left = len(futures)
        self.audio_s = 0.0  # the scheduler's queue accounts for the audio from here
        self.admission.costs.observe_plan(self.model, self.planned, nominal)
        self.nominal = nominal
        for future in futures:
            future.add_done_callback(self._window_done)
        if not futures:
            self.close()
        self.admission.publish(self.model)

    def _window_done(self, future: asyncio.Future) -> None:
        self.left -= 1
        if future.cancelled() or future.exception() is not None:
            self.failed = True
        if self.left <= 0:
            if not self.failed:
                self.admission.learn(self)
            self.close()
        else:
            self.admission.publish(self.model)

    def close(self) -> None:
        """The request ended (answered, failed or abandoned): it is no longer work ahead of anyone."""
        self.admission.tickets.discard(self)
        self.admission.publish(self.model)


class Admission:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.max_queue_s, self.metrics = settings, settings.max_queue_audio_s, metrics
        self.costs = CostEstimator(PRIOR_CPU)
        self._prior_set = False
        self.tickets: set[Ticket] = set()
        self._slots = asyncio.Semaphore(settings.max_concurrent_decodes)
        # decodes get threads of their own: the default pool stays free for header probes, so a request
        # that will be refused never waits behind another request's decoding
        self._pool = ThreadPoolExecutor(settings.max_concurrent_decodes, thread_name_prefix="k2d-decode")
        self._typical: dict[str, tuple[float, float]] = {}  # model -> weighted mean, variance of request seconds
        self._news: asyncio.Event | None = None  # set when a request was measured (a cold start waits for it)

    # --- the estimate -------------------------------------------------------------------------------------------

    def _declare(self, name: str, served: ServedModel) -> None:
        if not self._prior_set:  # the device is known once models are loaded
            device = self.settings.runtime().resolve()[0]
            self.costs.prior_per_m = PRIOR_GPU if device == "cuda" else PRIOR_CPU
            self._prior_set = True
        if not self.costs.known(name):
            self.costs.declare(name, getattr(served.entry, "parameters", None))

    def nominal(self, served: ServedModel, duration_s: float) -> float:
        """Nominal seconds of an upload of ``duration_s`` (before it is decoded and cut)."""
        return nominal_s(planned_windows(duration_s, served.max_window_s), frames_of(served.scheduler.engine))

    def estimate(self, name: str, served: ServedModel, duration_s: float) -> tuple[float, float]:
        """(planned nominal seconds, estimated compute seconds) of an upload of ``duration_s`` to this model."""
        self._declare(name, served)
        nominal = self.nominal(served, duration_s)
        return nominal, self.costs.estimate(name, self.costs.planned(name, nominal))

    def windows_nominal(self, served: ServedModel, windows: list[float]) -> float:
        return nominal_s(windows, frames_of(served.scheduler.engine))

    def learn(self, ticket: Ticket) -> None:
        self.costs.observe(ticket.model, ticket.nominal, ticket.spent)
        self.metrics.cost_ratio.labels(ticket.model).set(self.costs.ratio(ticket.model))
        if self._news is not None:
            self._news.set()
            self._news = None

    def guessing(self, name: str) -> bool:
        """Is the decision about ``name`` made on a prior: the model, or one with work admitted, never measured?"""
        return not self.costs.measured(name) or any(not self.costs.measured(t.model) for t in self.tickets)

    # --- the ledger ---------------------------------------------------------------------------------------------

    def work_ahead(self, deadline: float) -> float:
        """Compute seconds admitted with a deadline no later than ``deadline`` and not yet run (every model:
        they share the machine)."""
        return sum(t.remaining for t in self.tickets if t.deadline <= deadline)

    def load_s(self, name: str, served: ServedModel) -> float:
        """Seconds of audio this model still has to get through (queued + admitted, not yet queued)."""
        return served.scheduler.queued_audio_s + sum(t.audio_s for t in self.tickets if t.model == name)

    def publish(self, name: str) -> None:
        mine = [t for t in self.tickets if t.model == name]
        self.metrics.admitted.labels(name).set(len(mine))
        self.metrics.admitted_work.labels(name).set(sum(t.remaining for t in mine))

    # --- decisions ----------------------------------------------------------------------------------------------

    def typical_s(self, name: str) -> float:
        """Audio seconds of a typical request to this model, erring long: the weighted mean of recent
        requests plus one standard deviation (so most requests the early check lets through fit), at
        most one window (so a few huge uploads cannot make it refuse short requests that fit)."""
        mean, variance = self._typical.get(name, (0.0, 0.0))
        return min(mean + math.sqrt(variance), MAX_WINDOW_S)

    def precheck(self, name: str, served: ServedModel, deadline: float) -> None:
        """Refuse at once, before the upload is read, when the model cannot take even a typical request.

        The precise check (:meth:`admit`, with the header's duration) comes later; this one trades at
        most one typical request's worth of the bound for a 429 that costs no upload, parse or probe.
        On a prior alone it refuses only what the queue bounds refuse: the route may wait for a measurement."""
        self._check(name, served, self.typical_s(name), deadline, deadline_check=not self.guessing(name))

    def admit(self, name: str, served: ServedModel, duration_s: float, deadline: float) -> Ticket:
        """A ticket for this request, or OverloadedError (429) if it cannot finish before ``deadline``."""
        self._weigh(name, duration_s)
        return self._admit(name, served, duration_s, deadline)

    async def admit_measured(self, name: str, served: ServedModel, duration_s: float, deadline: float) -> Ticket:
        """:meth:`admit`; but a refusal made on the prior alone (a cold start) waits — at most ``COLD_WAIT``
        of the time left — for the first request to be measured, and is decided again on what it cost."""
        self._weigh(name, duration_s)
        until = time.monotonic() + COLD_WAIT * (deadline - time.monotonic())
        while True:
            try:
                return self._admit(name, served, duration_s, deadline)
            except OverloadedError:
                if not self.guessing(name) or time.monotonic() >= until:
                    raise
            if self._news is None:
                self._news = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), until - time.monotonic())

    def _admit(self, name: str, served: ServedModel, duration_s: float, deadline: float) -> Ticket:
        nominal, _ = self._check(name, served, duration_s, deadline)
        ticket = Ticket(self, name, deadline, duration_s, nominal)
        self.tickets.add(ticket)
        self.publish(name)
        return ticket

    def _weigh(self, name: str, seconds: float) -> None:
        """Exponentially weighted mean and variance of the request lengths seen."""
        self._typical[name] = weighted_update(self._typical.get(name), seconds, TYPICAL_WEIGHT)

    def _check(self, name: str, served: ServedModel, duration_s: float, deadline: float,
               deadline_check: bool = True) -> tuple[float, float]:
        """(nominal, estimate) of the request if the model can take it; else OverloadedError."""
        scheduler = served.scheduler
        remaining = deadline - time.monotonic()
        nominal, estimate = self.estimate(name, served, duration_s)
        ahead = self.work_ahead(deadline)
        if (queued := scheduler.queued_windows) >= scheduler.max_queue:
            raise OverloadedError(f"model {name!r} has {queued} windows queued (limit {scheduler.max_queue})",
                                  retry_s(ahead * min(1.0, (queued + 1 - scheduler.max_queue) / max(queued, 1))))
        load = self.load_s(name, served)
        if load > 0 and load + duration_s > self.max_queue_s:
            excess = (load + duration_s - self.max_queue_s) / load  # the share of the work ahead that must run first
            raise OverloadedError(f"model {name!r} has {load:.0f} s of audio waiting (limit {self.max_queue_s:.0f} s)",
                                  retry_s(ahead * min(1.0, excess)))
        if deadline_check and ahead > 0 and ahead + estimate > HEADROOM * remaining:
            raise OverloadedError(f"model {name!r} cannot serve this request within its deadline (~{ahead:.0f} s of "
                                  f"work ahead, ~{estimate:.0f} s its own, {remaining:.0f} s left)",
                                  self.retry_after(ahead, estimate, remaining))
        return nominal, estimate

    def retry_after(self, ahead: float, estimate: float, remaining: float) -> int:
        """Seconds until enough of the work ahead has run for a request like this one, arriving again with
        the time it has now, to fit (all of it when the request only fits with nothing ahead)."""
        return retry_s(self.drain_s(min(ahead, ahead + estimate - HEADROOM * remaining)))

    def drain_s(self, work: float) -> float:
        """Seconds until ``work`` compute seconds of the admitted work will have left the ledger. Work leaves
        it a window at a time, when the window's transcript is final, earliest deadline first: the answer
        is when the window that completes ``work`` finishes, not the moment the sum would reach it."""
        if work <= 0:
            return 0.0
        done = 0.0
        for ticket in sorted(self.tickets, key=lambda t: t.deadline):
            windows = ticket.left if ticket.windows else 1  # not yet cut into windows: leaves all at once
            for _ in range(max(windows, 1)):
                done += ticket.remaining / max(windows, 1)
                if done >= work - 1e-9:
                    return done
        return done

    def retry_after_typical(self, name: str, served: ServedModel) -> int:
        """Retry-After for a request that failed after admission (a timeout): when a typical request of
        this model, sent with a fresh deadline, would be admitted."""
        timeout = self.settings.request_timeout_s
        _, estimate = self.estimate(name, served, self.typical_s(name))
        return self.retry_after(self.work_ahead(math.inf), estimate, timeout)

    # --- bounded decoding ---------------------------------------------------------------------------------------

    async def run_bounded(self, fn: Callable[..., T], *args, stop: threading.Event, ticket: Ticket | None = None,
                          **kwargs) -> T:
        """Run ``fn(*args, stop=stop, **kwargs)`` in a thread once a decode slot is free; cancelling sets ``stop``.
        The thread's wall-clock time is charged to ``ticket`` in full: decoding and VAD take the same cores as
        the models. (Not shared on the engines' clock: a one-thread VAD beside a one-thread decoder on two
        cores slows neither, and sharing would make the decoder's call look cheaper than it is alone.)"""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            future = loop.run_in_executor(self._pool, functools.partial(fn, *args, stop=stop, **kwargs))
        except BaseException:
            self._slots.release()
            raise
        # the slot frees (and the time is charged) when the thread ends, not when we stop waiting
        future.add_done_callback(functools.partial(self._thread_ended, started, ticket))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            raise

    def _thread_ended(self, started: float, ticket: Ticket | None, future: asyncio.Future) -> None:
        self._slots.release()
        if ticket is not None:
            ticket.charge(time.monotonic() - started)
        if not future.cancelled():
            future.exception()  # retrieved: an abandoned request's error is expected, not worth a warning

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def retry_s(seconds: float) -> int:
    """A Retry-After value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds)) if math.isfinite(seconds) else 1


class EarlyRefusal:
    """ASGI middleware: while *every* served model is overloaded, answer a transcription request 429
    from its headers alone, before a byte of its upload is read — whichever model it names would refuse
    it anyway. The connection stays open: the server reads the rest of the body and drops it, so a
    client still sending a large file gets the answer once it reads, not a broken pipe."""

    def __init__(self, app, admission: Admission, models: ModelManager, settings: Settings, paths: frozenset[str]):
        self.app, self.admission, self.models, self.settings, self.paths = app, admission, models, settings, paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            refusal = self._refusal(scope)
            if refusal is not None:
                return await send_error(send, 429, str(refusal), "overloaded", {"Retry-After": str(refusal.retry_after)})
        await self.app(scope, receive, send)

    def _refusal(self, scope) -> OverloadedError | None:
        """The mildest refusal if every model refuses, None if any would take the request (or auth fails)."""
        headers = dict(scope["headers"])
        if not self.models.models or not key_matches(headers.get(b"authorization", b"").decode("latin-1"),
                                                     self.settings.api_key):
            return None  # unauthenticated: the route answers 401, never a hint about the load
        deadline = scope.get("state", {}).get(DEADLINE_KEY, time.monotonic() + 1)
        refusals = []
        for name, served in self.models.models.items():
            try:
                self.admission.precheck(name, served, deadline)
            except OverloadedError as err:
                refusals.append(err)
            else:
                return None
        return min(refusals, key=lambda err: err.retry_after)
