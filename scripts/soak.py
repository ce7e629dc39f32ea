"""Soak test: a bounded closed-loop run at high concurrency against a server this script starts.

    python scripts/soak.py [--concurrency 64] [--duration 30] [--queue-audio-s 60] [--out runs/soak.json]

Starts ``k2d serve`` on a free 127.0.0.1 port (loopback only), lets ``--concurrency`` clients send
the test clips back to back for ``--duration`` seconds, then SIGTERMs the server and reports status
counts, latency percentiles (all answers, 200s, 429s), the server's RSS (start, peak, end) and its
exit code. Latencies are the client's (upload included) and, for 429s, also the server's own (its
``Server-Timing`` header). On a small machine the load generator's own event loop adds delay of its
own (reported as ``client_loop_lag``), so a *prober* in a process of its own sends one request at a
time beside the load and reports what an otherwise idle client sees. A small queue bound
(``--queue-audio-s``) makes the overload path run: 429s must come back fast, and no answer may be a
5xx (exit status 1 if one is).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
CLIPS = ["en_lecture.flac", "mixed_gradient.flac", "mixed_loss.ogg", "mixed_batch.mp3", "silence.flac"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(settings_env: dict[str, str]) -> tuple[subprocess.Popen, str, str]:
    """``k2d serve`` on a free loopback port with these ``K2D_*`` settings; returns once /readyz says 200."""
    port = free_port()
    env = {**os.environ, "K2D_MODELS_DIR": os.environ.get("K2D_MODELS_DIR", str(REPO / "models")),
           "HF_HUB_OFFLINE": "1", **settings_env, "K2D_HOST": "127.0.0.1", "K2D_PORT": str(port)}
    log = tempfile.NamedTemporaryFile("w+", prefix="k2d-bench-", suffix=".log", delete=False)  # noqa: SIM115
    # a file, not a pipe: thousands of access-log lines would fill a pipe nobody reads and block the server
    server = subprocess.Popen([sys.executable, "-m", "k2d_cli", "serve"], cwd=REPO, env=env,
                              stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return server, url, log.name
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.kill()
    raise SystemExit(f"server did not become ready:\n{Path(log.name).read_text()}")


class RssSampler(threading.Thread):
    """The server's resident memory every 100 ms: start, peak and end of the run."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.samples, self.stop = psutil.Process(pid), [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append(self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.1)

    def summary(self) -> dict:
        mb = [s / 1e6 for s in self.samples if s > 0] or [0.0]  # an exited (zombie) process reads 0
        return {"start_mb": round(mb[0]), "peak_mb": round(max(mb)), "end_mb": round(mb[-1])}


async def client(url: str, clips: list[tuple[str, bytes]], until: float, results: list, tls: ssl.SSLContext) -> None:
    """Closed loop: send, wait for the answer, send again; after a 429 back off briefly, as a client should."""
    async with httpx.AsyncClient(timeout=300, verify=tls) as http:
        while time.monotonic() < until:
            name, data = random.choice(clips)
            started = time.monotonic()
            server_s = None
            try:
                response = await http.post(url + "/transcribe", files={"file": (name, data)})
                status, server_s = response.status_code, _server_seconds(response)
            except httpx.HTTPError as err:
                status = f"error:{type(err).__name__}"
            results.append((status, time.monotonic() - started, server_s))
            if status == 429:
                await asyncio.sleep(random.uniform(0.1, 0.5))


def _server_seconds(response: httpx.Response) -> float | None:
    """The server's own time from the upload's last byte to its answer (Server-Timing ``app`` − ``upload``),
    free of this client's delays in sending."""
    timings = dict(part.strip().split(";dur=") for part in response.headers.get("server-timing", "").split(",")
                   if ";dur=" in part)
    if "app" not in timings:
        return None
    return (float(timings["app"]) - float(timings.get("upload", 0))) / 1000


def prober(url: str, clip: tuple[str, bytes], seconds: float) -> list[tuple[int | str, float]]:
    """In a process of its own: one request at a time beside the load, from a client with nothing else to do."""
    results: list[tuple[int | str, float]] = []
    until = time.monotonic() + seconds
    with httpx.Client(timeout=300) as http:
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                status: int | str = http.post(url + "/transcribe", files={"file": clip}).status_code
            except httpx.HTTPError as err:
                status = f"error:{type(err).__name__}"
            results.append((status, time.monotonic() - started))
            time.sleep(random.uniform(0.05, 0.15))
    return results


async def loop_lag(until: float, lags: list[float]) -> None:
    """How late this client's own event loop wakes up (10 ms sleeps): its share of the client latencies."""
    while time.monotonic() < until:
        started = time.monotonic()
        await asyncio.sleep(0.01)
        lags.append(time.monotonic() - started - 0.01)


def stop_server(server: subprocess.Popen) -> int:
    """SIGTERM (the drain under test); kill only if it hangs past its grace period."""
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout=200)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {}
    ordered = sorted(latencies)
    return {"n": len(ordered), **{f"p{round(q * 100)}_ms": _at(ordered, q) for q in (0.5, 0.9, 0.99)},
            "max_ms": round(ordered[-1] * 1000, 1)}


def _at(ordered: list[float], quantile: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] * 1000, 1)


def report(results: list, probed: list, lags: list, rss: dict, exit_code: int, elapsed: float,
           args: argparse.Namespace, log_path: str) -> dict:
    results = results + [(status, lat, None) for status, lat in probed]  # every answer counts toward the statuses
    statuses = Counter(str(status) for status, _, _ in results)
    by_status = {key: [lat for status, lat, _ in results if str(status) == key] for key in ("200", "429")}
    server_429 = [srv for status, _, srv in results if status == 429 and srv is not None]
    return {
        "concurrency": args.concurrency, "duration_s": round(elapsed, 1), "model": args.model, "settings": args.setting,
        "max_queue_audio_s": args.queue_audio_s, "requests": len(results),
        "throughput_rps": round(len(results) / elapsed, 2), "status_counts": dict(sorted(statuses.items())),
        "server_errors": sum(n for s, n in statuses.items() if s.startswith("5") or s.startswith("error")),
        "latency_all": percentiles([lat for _, lat, _ in results]),
        "latency_200": percentiles(by_status["200"]), "latency_429": percentiles(by_status["429"]),
        "latency_429_after_upload_server_side": percentiles(server_429),
        "latency_429_idle_client": percentiles([lat for status, lat in probed if status == 429]),
        "latency_200_idle_client": percentiles([lat for status, lat in probed if status == 200]),
        "client_loop_lag": percentiles(lags),
        "server_rss": rss, "server_exit_code": exit_code, "server_log": log_path,
    }


async def soak(url: str, args: argparse.Namespace) -> tuple[list, list]:
    clips = [(name, (REPO / "tests" / "data" / name).read_bytes()) for name in CLIPS]
    until, results, lags = time.monotonic() + args.duration, [], []
    # a client (and a connection) each, sharing one TLS context: 64 contexts of their own would each load the CA
    # bundle at start, seconds of blocked event loop on a small machine charged to the first requests' latency
    tls = ssl.create_default_context()
    await asyncio.gather(loop_lag(until, lags),
                         *(client(url, clips, until, results, tls) for _ in range(args.concurrency)))
    return results, lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (clients finish their request)")
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--queue-audio-s", type=float, default=60.0, help="the server's K2D_MAX_QUEUE_AUDIO_S")
    parser.add_argument("--setting", action="append", default=[], metavar="K2D_NAME=VALUE",
                        help="extra server settings, e.g. K2D_CPU_THREADS=1 (repeatable)")
    parser.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = parser.parse_args()
    server, url, log_path = start_server({"K2D_MODELS": json.dumps([args.model]),
                                          "K2D_MAX_QUEUE_AUDIO_S": str(args.queue_audio_s),
                                          **dict(item.split("=", 1) for item in args.setting)})
    sampler = RssSampler(server.pid)
    sampler.start()
    clip = CLIPS[0], (REPO / "tests" / "data" / CLIPS[0]).read_bytes()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        started = time.monotonic()
        try:
            probing = pool.apply_async(prober, (url, clip, args.duration))
            results, lags = asyncio.run(soak(url, args))
            probed = probing.get(timeout=600)
        finally:
            elapsed = time.monotonic() - started
            exit_code = stop_server(server)
            sampler.stop.set()
    summary = report(results, probed, lags, sampler.summary(), exit_code, elapsed, args, log_path)
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
    sys.exit(1 if summary["server_errors"] or exit_code != 0 else 0)


if __name__ == "__main__":
    main()
