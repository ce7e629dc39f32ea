"""Admission control and the decode cap: refuse early and cheaply, never after the expensive work.

A request is weighed against its model's load *before* it is decoded: seconds of audio already
queued, plus the seconds of requests admitted but still being decoded or VAD-split (reserved here,
by the duration their header declares). If that load is over ``K2D_MAX_QUEUE_AUDIO_S``, or the windows
ahead cannot be run within the request's remaining deadline at the model's measured cost per window, the answer is
429 with a Retry-After estimate — in milliseconds, not after seconds of decoding. Decoding and VAD
run in threads, at most ``K2D_MAX_CONCURRENT_DECODES`` at once, each slot held until its thread
really ends (a cancelled request's thread is told to stop, but still counts until it has).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.dependencies import key_matches
from app.errors import OverloadedError, error_body
from app.lifecycle import DEADLINE_KEY
from app.metrics import Metrics
from app.model_manager import ModelManager, ServedModel
from app.settings import Settings
from k2d.windows import MAX_WINDOW_S

T = TypeVar("T")


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
        self._cost: dict[str, tuple[float, float]] = {}  # model -> (when read, engine seconds per window)

    def load_s(self, name: str, served: ServedModel) -> float:
        """Seconds of audio this model still has to get through (queued + admitted, not yet queued)."""
        return served.scheduler.queued_audio_s + self.reserved[name]

    def wait_s(self, name: str, served: ServedModel, extra_windows: int = 0) -> float:
        """Expected seconds until the model has run every window ahead (0 while its cost is unknown).

        Cost is per window, not per audio second: a 3 s clip is padded to 30 s and costs as much as a
        full window; the average engine time per window includes what batching saves."""
        ahead = len(served.scheduler.pending) + self.reserved_windows[name] + extra_windows
        return ahead * self._seconds_per_window(name) / served.scheduler.engine.workers

    def _seconds_per_window(self, name: str) -> float:
        """Average engine seconds per window so far, re-read from the metrics at most once a second."""
        now = time.monotonic()
        read_at, cost = self._cost.get(name, (-1.0, 0.0))
        if now - read_at > 1.0:
            registry, labels = self.metrics.registry, {"model": name}
            engine_s = registry.get_sample_value("k2d_inference_seconds_total", labels) or 0.0
            windows = registry.get_sample_value("k2d_batch_size_sum", labels) or 0.0
            cost = engine_s / windows if windows else 0.0
            self._cost[name] = (now, cost)
        return cost

    def precheck(self, name: str, served: ServedModel, remaining_s: float) -> None:
        """Refuse at once, before even reading the header, when the load alone is already too much."""
        self.admit(name, served, 0.0, remaining_s).release()

    def admit(self, name: str, served: ServedModel, estimate_s: float, remaining_s: float) -> Reservation:
        """Reserve ``estimate_s`` for this request, or raise OverloadedError (429) if the model cannot take it."""
        scheduler = served.scheduler
        if len(scheduler.pending) >= scheduler.max_queue:
            raise OverloadedError(f"model {name!r} has {len(scheduler.pending)} windows queued (limit "
                                  f"{scheduler.max_queue})", self._retry_after(name, served))
        load = self.load_s(name, served)
        if load > 0 and load + estimate_s > self.max_queue_s:
            raise OverloadedError(f"model {name!r} has {load:.0f} s of audio waiting (limit {self.max_queue_s:.0f} s)",
                                  self._retry_after(name, served))
        wait = self.wait_s(name, served, windows_in(estimate_s))
        if load > 0 and wait > remaining_s:
            raise OverloadedError(f"model {name!r} cannot serve this request within its deadline (~{wait:.0f} s of "
                                  "work ahead)", self._retry_after(name, served))
        return Reservation(self, name, estimate_s)

    def _retry_after(self, name: str, served: ServedModel) -> int:
        """Seconds until the work ahead is likely done (1–60; 1 while its cost is unknown)."""
        return min(60, max(1, math.ceil(self.wait_s(name, served))))

    async def run_bounded(self, fn: Callable[..., T], *args, stop: threading.Event) -> T:
        """Run ``fn(*args, stop=stop)`` in a thread once a decode slot is free; cancelling sets ``stop``."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._pool, functools.partial(fn, *args, stop=stop))
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
    without parsing its upload — whichever model it names would refuse it anyway. The body is still
    read (and dropped), so a client sending a large file gets the answer, not a broken pipe."""

    def __init__(self, app, admission: Admission, models: ModelManager, settings: Settings, paths: frozenset[str]):
        self.app, self.admission, self.models, self.settings, self.paths = app, admission, models, settings, paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _drain_body(receive)
                return await _send_json(send, 429, error_body(429, str(refusal), "overloaded"),
                                        {"Retry-After": str(refusal.retry_after)})
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


async def _drain_body(receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _send_json(send, status: int, body: dict, headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"application/json")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
