"""The one harness for benchmarks and reliability checks: a real ``k2d serve`` process on a loopback port,
its resident memory over time, and the server's own view of a request.

It starts the server as users do (a subprocess with ``K2D_*`` settings), talks to it over HTTP only and
stops it with SIGTERM (so the drain runs too). ``k2d bench ...`` and the opt-in soak tests use it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``k2d serve`` on a free 127.0.0.1 port; ``url``, ``pid``, ``log`` (a file: an unread pipe would block it)."""

    def __init__(self, settings: dict[str, str], ready_timeout_s: float = 180):
        port = free_port()
        env = {**os.environ, "K2D_MODELS_DIR": os.environ.get("K2D_MODELS_DIR", str(REPO / "models")),
               "HF_HUB_OFFLINE": "1", **settings, "K2D_HOST": "127.0.0.1", "K2D_PORT": str(port)}
        handle = tempfile.NamedTemporaryFile("w+", prefix="k2d-serve-", suffix=".log", delete=False)  # noqa: SIM115
        self.log = handle.name
        self.process = subprocess.Popen([sys.executable, "-m", "k2d_cli.main", "serve"], cwd=REPO, env=env,
                                        stdout=handle, stderr=subprocess.STDOUT, text=True)
        self.url, self.pid = f"http://127.0.0.1:{port}", self.process.pid
        self._wait_ready(ready_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.process.kill()
        raise RuntimeError(f"server did not become ready:\n{Path(self.log).read_text()[-4000:]}")

    def stop(self) -> int:
        """SIGTERM (the drain is part of what is measured); kill only if it hangs past its grace period."""
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=200)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@contextmanager
def serving(settings: dict[str, str]):
    server = Server(settings)
    try:
        yield server
    finally:
        server.stop()


class RssSampler(threading.Thread):
    """A process's resident memory every 100 ms: start, peak and end of the run."""

    def __init__(self, pid: int):
        import psutil

        super().__init__(daemon=True)
        self.process, self.samples, self.stop = psutil.Process(pid), [], threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                self.samples.append(self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.1)

    def summary(self) -> dict:
        mb = [s / 1e6 for s in self.samples if s > 0] or [0.0]  # an exited (zombie) process reads 0
        return {"start_mb": round(mb[0]), "peak_mb": round(max(mb)), "end_mb": round(mb[-1])}


def server_seconds(response: httpx.Response) -> float | None:
    """The server's own time from the upload's last byte to its answer (Server-Timing ``app`` − ``upload``)."""
    timings = dict(part.strip().split(";dur=") for part in response.headers.get("server-timing", "").split(",")
                   if ";dur=" in part)
    if "app" not in timings:
        return None
    return (float(timings["app"]) - float(timings.get("upload", 0))) / 1000


def metric_totals(url: str, names: set[str], status: str | None = None) -> dict[str, float]:
    """Totals over every label of a few series (``k2d_requests_total`` only with ``status`` when given)."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name in names and (status is None or sample.name != "k2d_requests_total"
                                         or sample.labels.get("status") == status):
                totals[sample.name] += sample.value
    return totals


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {}
    ordered = sorted(latencies)
    at = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)  # noqa: E731
    return {"n": len(ordered), **{f"p{round(q * 100)}_ms": at(q) for q in (0.5, 0.9, 0.99)},
            "max_ms": round(ordered[-1] * 1000, 1)}
