"""Admission control and the decode cap: refuse early and cheaply, never after the expensive work.

A request is weighed against its model's load *before* it is decoded: seconds of audio already
queued, plus the seconds of requests admitted but still being decoded or VAD-split (reserved here,
by the duration their header declares). If that load is over ``K2D_MAX_QUEUE_AUDIO_S``, or the windows
ahead cannot be run within the request's remaining deadline at the model's measured cost per window, the answer is
429 with a Retry-After estimate — in milliseconds, not after seconds of decoding. Twice: from the
request's headers alone, as soon as it arrives, if the model cannot take even a *typical* request
(:class:`EarlyRefusal`, nothing of the upload read), then with the duration the file's header declares. Decoding and VAD
run in threads, at most ``K2D_MAX_CONCURRENT_DECODES`` at once, each slot held until its thread
really ends (a cancelled request's thread is told to stop, but still counts until it has).
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.dependencies import key_matches
from app.errors import OverloadedError, send_error
from app.lifecycle import DEADLINE_KEY
from app.metrics import Metrics
from app.model_manager import ModelManager, ServedModel
from app.settings import Settings
from k2d.windows import MAX_WINDOW_S

T = TypeVar("T")
TYPICAL_WEIGHT = 0.1  # weight of the newest request in a model's typical request length


class Reservation:
    """Audio a request holds against its model's load until its windows are queued."""

    def __init__(self, admission: Admission, name: str, seconds: float):
        self.admission, self.name, self.seconds = admission, name, seconds
        admission.reserved[name] += seconds
        admission.reserved_windows[name] += windows_in(seconds)

    def release(self) -> None:
        self.admission.reserved[self.name] -= self.seconds
        self.admission.reserved_windows[self.name] -= windows_in(self.seconds)
        self.seconds = 0.0


def windows_in(seconds: float) -> int:
    """Windows the model will run for this much audio (at least one: every window costs a full 30 s)."""
    return max(1, math.ceil(seconds / MAX_WINDOW_S)) if seconds > 0 else 0


class Admission:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.max_queue_s, self.metrics = settings.max_queue_audio_s, metrics
        self.reserved: dict[str, float] = defaultdict(float)
        self.reserved_windows: dict[str, int] = defaultdict(int)
        self._slots = asyncio.Semaphore(settings.max_concurrent_decodes)
        # decodes get threads of their own: the default pool stays free for header probes, so a request
        # that will be refused never waits behind another request's decoding
        self._pool = ThreadPoolExecutor(settings.max_concurrent_decodes, thread_name_prefix="k2d-decode")
        self._typical: dict[str, tuple[float, float]] = {}  # model -> weighted mean, variance of request seconds

    def load_s(self, name: str, served: ServedModel) -> float:
        """Seconds of audio this model still has to get through (queued + admitted, not yet queued)."""
        return served.scheduler.queued_audio_s + self.reserved[name]

    def wait_s(self, name: str, served: ServedModel, extra_windows: int = 0) -> float:
        """Expected seconds until the model has run every window ahead (0 while its cost is unknown).

        Cost is per window, not per audio second: a 3 s clip is padded to its context and costs about
        as much as a full window; the scheduler's measured cost includes what batching saves."""
        return served.scheduler.backlog_s(self.reserved_windows[name] + extra_windows)

    def typical_s(self, name: str) -> float:
        """Audio seconds of a typical request to this model, erring long: the weighted mean of recent
        requests plus one standard deviation (so most requests the early check lets through fit), at
        most one window (so a few huge uploads cannot make it refuse short requests that fit)."""
        mean, variance = self._typical.get(name, (0.0, 0.0))
        return min(mean + math.sqrt(variance), MAX_WINDOW_S)

    def precheck(self, name: str, served: ServedModel, remaining_s: float) -> None:
        """Refuse at once, before the upload is read, when the model cannot take even a typical request.

        The precise check (:meth:`admit`, with the header's duration) comes later; this one trades at
        most one typical request's worth of the bound for a 429 that costs no upload, parse or probe."""
        self._check(name, served, self.typical_s(name), remaining_s)

    def admit(self, name: str, served: ServedModel, estimate_s: float, remaining_s: float) -> Reservation:
        """Reserve ``estimate_s`` for this request, or raise OverloadedError (429) if the model cannot take it."""
        self._weigh(name, estimate_s)
        self._check(name, served, estimate_s, remaining_s)
        return Reservation(self, name, estimate_s)

    def _weigh(self, name: str, seconds: float) -> None:
        """Exponentially weighted mean and variance of the request lengths seen (West's update)."""
        if name not in self._typical:
            self._typical[name] = (seconds, 0.0)
            return
        mean, variance = self._typical[name]
        delta = seconds - mean
        mean += TYPICAL_WEIGHT * delta
        self._typical[name] = (mean, (1 - TYPICAL_WEIGHT) * (variance + TYPICAL_WEIGHT * delta * delta))

    def _check(self, name: str, served: ServedModel, estimate_s: float, remaining_s: float) -> None:
        scheduler = served.scheduler
        if (queued := scheduler.queued_windows) >= scheduler.max_queue:
            raise OverloadedError(f"model {name!r} has {queued} windows queued (limit {scheduler.max_queue})",
                                  self._retry_after(name, served))
        load = self.load_s(name, served)
        if load > 0 and load + estimate_s > self.max_queue_s:
            raise OverloadedError(f"model {name!r} has {load:.0f} s of audio waiting (limit {self.max_queue_s:.0f} s)",
                                  self._retry_after(name, served))
        wait = self.wait_s(name, served, windows_in(estimate_s))
        if load > 0 and wait > remaining_s:
            raise OverloadedError(f"model {name!r} cannot serve this request within its deadline (~{wait:.0f} s of "
                                  "work ahead)", self._retry_after(name, served))

    def _retry_after(self, name: str, served: ServedModel) -> int:
        """Seconds until the work ahead is likely done (1–60; 1 while its cost is unknown)."""
        return min(60, max(1, math.ceil(self.wait_s(name, served))))

    async def run_bounded(self, fn: Callable[..., T], *args, stop: threading.Event, **kwargs) -> T:
        """Run ``fn(*args, stop=stop, **kwargs)`` in a thread once a decode slot is free; cancelling sets ``stop``."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._pool, functools.partial(fn, *args, stop=stop, **kwargs))
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(self._thread_ended)  # the slot frees when the thread ends, not when we stop waiting
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            raise

    def _thread_ended(self, future: asyncio.Future) -> None:
        self._slots.release()
        if not future.cancelled():
            future.exception()  # retrieved: an abandoned request's error is expected, not worth a warning

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


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
        remaining = scope.get("state", {}).get(DEADLINE_KEY, time.monotonic() + 1) - time.monotonic()
        refusals = []
        for name, served in self.models.models.items():
            try:
                self.admission.precheck(name, served, remaining)
            except OverloadedError as err:
                refusals.append(err)
            else:
                return None
        return min(refusals, key=lambda err: err.retry_after)
