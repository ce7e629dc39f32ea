"""Soak: a bounded closed-loop run at high concurrency against a real server (the harness's).

``--concurrency`` clients send the test clips back to back for ``duration_s`` seconds, then the server gets
SIGTERM; the report has status counts, latency percentiles (all answers, 200s, 429s), the server's RSS
(start, peak, end) and its exit code. Latencies are the client's (upload included) and, for 429s, also the
server's own (its ``Server-Timing`` header). On a small machine the load generator's own event loop adds
delay (reported as ``client_loop_lag``), so a *prober* in a process of its own sends one request at a time
beside the load and reports what an otherwise idle client sees. A small queue bound makes the overload
path run: 429s must come back fast, and no answer may be a 5xx. ``tests/test_soak.py`` runs it (opt-in).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from loadtest.harness import REPO, RssSampler, Server, percentiles, server_seconds

DATA = REPO / "tests" / "data"
CLIPS = ["en_lecture.flac", "mixed_gradient.flac", "mixed_loss.ogg", "mixed_batch.mp3", "silence.flac"]


@dataclass
class SoakOptions:
    concurrency: int = 64
    duration: float = 30.0  # seconds of load (clients finish their request)
    model: str = "whisper-tiny.en"
    queue_audio_s: float = 60.0  # the server's K2D_MAX_QUEUE_AUDIO_S
    settings: dict = field(default_factory=dict)  # more K2D_* settings


async def client(url: str, clips: list[tuple[str, bytes]], until: float, results: list, tls: ssl.SSLContext) -> None:
    """Closed loop: send, wait for the answer, send again; after a 429 back off briefly, as a client should."""
    async with httpx.AsyncClient(timeout=300, verify=tls) as http:
        while time.monotonic() < until:
            name, data = random.choice(clips)
            started = time.monotonic()
            server_s = None
            try:
                response = await http.post(url + "/transcribe", files={"file": (name, data)})
                status, server_s = response.status_code, server_seconds(response)
            except httpx.HTTPError as err:
                status = f"error:{type(err).__name__}"
            results.append((status, time.monotonic() - started, server_s))
            if status == 429:
                await asyncio.sleep(random.uniform(0.1, 0.5))



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





def report(results: list, probed: list, lags: list, rss: dict, exit_code: int, elapsed: float,
           args: SoakOptions, log_path: str) -> dict:
    results = results + [(status, lat, None) for status, lat in probed]  # every answer counts toward the statuses
    statuses = Counter(str(status) for status, _, _ in results)
    by_status = {key: [lat for status, lat, _ in results if str(status) == key] for key in ("200", "429")}
    server_429 = [srv for status, _, srv in results if status == 429 and srv is not None]
    return {
        "concurrency": args.concurrency, "duration_s": round(elapsed, 1), "model": args.model, "settings": args.settings,
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


async def _load(url: str, args: SoakOptions) -> tuple[list, list]:
    clips = [(name, (DATA / name).read_bytes()) for name in CLIPS]
    until, results, lags = time.monotonic() + args.duration, [], []
    # a client (and a connection) each, sharing one TLS context: 64 contexts of their own would each load the CA
    # bundle at start, seconds of blocked event loop on a small machine charged to the first requests' latency
    tls = ssl.create_default_context()
    await asyncio.gather(loop_lag(until, lags),
                         *(client(url, clips, until, results, tls) for _ in range(args.concurrency)))
    return results, lags


def soak(options: SoakOptions) -> dict:
    """Start a server, load it, stop it; the report (``server_errors`` and ``server_exit_code`` say pass/fail)."""
    server = Server({"K2D_MODELS": json.dumps([options.model]), "K2D_MAX_QUEUE_AUDIO_S": str(options.queue_audio_s),
                     **options.settings})
    sampler = RssSampler(server.pid)
    sampler.start()
    clip = CLIPS[0], (DATA / CLIPS[0]).read_bytes()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        started = time.monotonic()
        try:
            probing = pool.apply_async(prober, (server.url, clip, options.duration))
            results, lags = asyncio.run(_load(server.url, options))
            probed = probing.get(timeout=600)
        finally:
            elapsed = time.monotonic() - started
            exit_code = server.stop()
            sampler.stop.set()
    return report(results, probed, lags, sampler.summary(), exit_code, elapsed, options, server.log)
