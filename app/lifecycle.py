"""A request's life outside the route: deadline, client disconnects, metrics, and draining on SIGTERM.

``RequestGuard`` wraps every non-probe request:

* the request deadline starts when the request arrives, so it covers the upload too (an upload
  still arriving at the deadline gets 408);
* a client that disconnects before its response is complete cancels the request — its queued
  windows are cancelled and skipped by the scheduler — and is counted as status 499;
* every request is counted in ``k2d_requests_total`` with the status it really got (401, 404, 413,
  422 included), by the model it named once the service resolved it, else ``model="none"``;
* while draining, new requests get 503 at once.

``DrainingServer`` turns SIGTERM into a real drain: /readyz answers 503 and new requests 503,
in-flight requests finish (up to ``K2D_SHUTDOWN_GRACE_S``), then uvicorn shuts down and the process
exits 0; a drain cut short by the grace period exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn
from starlette.requests import Request

from app.errors import send_error
from app.metrics import Metrics

log = logging.getLogger("k2d")
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
DEADLINE_KEY, MODEL_KEY = "k2d_deadline", "k2d_model"
CLOSE = {"Connection": "close"}  # the connection ends with this answer (draining, or an upload that stalled)
CLIENT_CLOSED = 499  # nginx's convention: the client closed the connection before the response was complete


class Lifecycle:
    """Draining state and the number of requests in flight, shared by the middleware, /readyz and the server."""

    def __init__(self) -> None:
        self.draining = False
        self.drain_started = 0.0
        self.in_flight = 0
        self.clean = True  # False once a drain ran out of grace with requests still in flight

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining, self.drain_started = True, time.monotonic()


def deadline_of(request: Request) -> float:
    """The request's deadline (``time.monotonic()`` clock), set when it arrived."""
    return request.scope.get("state", {}).get(DEADLINE_KEY) or time.monotonic() + 120.0


def attribute_to(request: Request, model: str, metrics: Metrics) -> None:
    """Label this request's metrics with its model and count it in flight until the guard sees it end."""
    state = request.scope.setdefault("state", {})
    if MODEL_KEY not in state:
        state[MODEL_KEY] = model
        metrics.in_flight.labels(model).inc()


class _Exchange:
    """One request's ASGI conversation: where the body is, what was answered, whether the client left."""

    def __init__(self, receive, send, started: float, deadline: float):
        self._receive, self._send, self.started, self.deadline = receive, send, started, deadline
        self.body_done = self.complete = self.refused = False
        self.status: int | None = None
        self.body_at: float | None = None
        self.left = asyncio.Event()
        self.task: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None

    async def receive(self) -> dict:
        """The body (until the deadline); after it, the only news a route can get is the client leaving."""
        if self.refused:
            return {"type": "http.disconnect"}
        if self.body_done:
            await self.left.wait()
            return {"type": "http.disconnect"}
        try:
            async with asyncio.timeout(max(self.deadline - time.monotonic(), 0.001)):  # no extra task per chunk
                message = await self._receive()
        except TimeoutError:
            await self.refuse(408, "the upload did not arrive within the request timeout", "upload_timeout")
            return {"type": "http.disconnect"}
        if message["type"] == "http.disconnect":
            self.left.set()
        elif not message.get("more_body", False):
            self.body_done, self.body_at = True, time.monotonic()
            self._watcher = asyncio.create_task(self._watch())
        return message

    async def send(self, message: dict) -> None:
        if self.refused or self.left.is_set():
            return  # answered already (408), or nobody is listening any more
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message = {**message, "headers": [*message.get("headers", []), self._server_timing()]}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True  # before sending: the server wakes the watcher as soon as the body is out
        await self._send(message)

    def _server_timing(self) -> tuple[bytes, bytes]:
        """``Server-Timing``: ``upload`` (arrival to the body's last byte) and ``app`` (arrival to the answer)."""
        now = time.monotonic()
        upload = f"upload;dur={(self.body_at - self.started) * 1000:.1f}, " if self.body_at else ""
        return b"server-timing", f"{upload}app;dur={(now - self.started) * 1000:.1f}".encode()

    async def refuse(self, status: int, message: str, kind: str) -> None:
        """Answer for the route (it may still be running) and drop whatever it sends later."""
        self.status, self.refused, self.complete = status, True, True
        await send_error(self._send, status, message, kind, CLOSE)

    async def _watch(self) -> None:
        """Wait for the client to leave; if it leaves before the answer is complete, cancel the route."""
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if not self.complete:
            self.left.set()
            if self.task is not None:
                self.task.cancel()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    def final_status(self) -> int:
        if self.left.is_set() and not self.complete:
            return CLIENT_CLOSED
        return self.status or 500


class RequestGuard:
    """ASGI middleware: deadline, disconnect → cancel (499), per-status metrics, 503 while draining."""

    def __init__(self, app, lifecycle: Lifecycle, metrics: Metrics, timeout_s: float):
        self.app, self.lifecycle, self.metrics, self.timeout_s = app, lifecycle, metrics, timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            return await self.app(scope, receive, send)
        started = time.monotonic()
        state = scope.setdefault("state", {})
        state[DEADLINE_KEY] = started + self.timeout_s
        if self.lifecycle.draining:
            await send_error(send, 503, "the service is shutting down", "shutting_down", {"Retry-After": "1", **CLOSE})
            return self._record(state, 503, started)
        exchange = _Exchange(receive, send, started, state[DEADLINE_KEY])
        self.lifecycle.in_flight += 1
        try:
            await self._run(scope, exchange)
        finally:
            exchange.close()
            self.lifecycle.in_flight -= 1
            self._record(state, exchange.final_status(), started)

    async def _run(self, scope, exchange: _Exchange) -> None:
        """Run the route as a child task, so a client that leaves can cancel it without cancelling us."""
        exchange.task = asyncio.ensure_future(self.app(scope, exchange.receive, exchange.send))
        try:
            await exchange.task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not exchange.left.is_set() or (current is not None and current.cancelling()):
                raise  # cancelled from outside (server shutdown), not by a client that left

    def _record(self, state: dict, status: int, started: float) -> None:
        model = state.get(MODEL_KEY)
        if model is not None:
            self.metrics.in_flight.labels(model).dec()
        self.metrics.requests.labels(model or "none", str(status)).inc()
        self.metrics.request_seconds.labels(model or "none").observe(time.monotonic() - started)


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM/SIGINT starting a drain instead of closing the listening socket at once.

    During the drain the socket stays open so /readyz can say 503 (load balancers stop sending) and
    late requests get a clear 503; once no request is in flight, or the grace period is over, the
    normal uvicorn shutdown runs. A second signal falls back to uvicorn's own handling.
    """

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace_s: float):
        super().__init__(config)
        self.lifecycle, self.grace_s = lifecycle, grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.lifecycle.draining or sig not in (signal.SIGTERM, signal.SIGINT):
            return super().handle_exit(sig, frame)
        log.info("%s: draining %d request(s) in flight (grace %.0f s)", signal.Signals(sig).name,
                 self.lifecycle.in_flight, self.grace_s)
        self.lifecycle.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        lifecycle = self.lifecycle
        if lifecycle.draining and not self.should_exit:
            if lifecycle.in_flight == 0:
                log.info("drained: no request in flight")
                self.should_exit = True
            elif time.monotonic() - lifecycle.drain_started > self.grace_s:
                log.error("grace period over with %d request(s) in flight", lifecycle.in_flight)
                lifecycle.clean, self.should_exit = False, True
        return await super().on_tick(counter)
