"""SIGTERM while requests are in flight: /readyz and new requests get 503 at once, every in-flight
request still completes with 200, then the process exits 0 (``k2d serve`` as a real subprocess).

The request timeout (and with it the grace, timeout + 10 s) is sized from this machine's measured speed
(``tests.machine``): on a slower CPU the requests take longer, not a fixed deadline they would miss."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from k2d.audio import decode_audio, write_audio
from tests.conftest import DATA, REPO, free_port
from tests.machine import seconds_per_request

IN_FLIGHT = 16


def start_server(served_store, log: Path, **env) -> tuple[subprocess.Popen, str]:
    """``k2d serve`` logging to a file (a pipe nobody reads while requests run could fill and block it)."""
    port = free_port()
    env = {**os.environ, "K2D_MODELS_DIR": str(served_store.store), "K2D_PORT": str(port), "K2D_CPU_THREADS": "2", **env}
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "k2d_cli", "serve"], cwd=REPO, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.3)
    server.kill()
    raise RuntimeError(log.read_text())


def in_flight(url: str) -> float:
    lines = httpx.get(url + "/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("k2d_in_flight_requests{"))


def run_drain(served_store, log: Path, audio: bytes, fields: dict, count: int, model: str,
              timeout_s: float) -> tuple[list, int, str, dict]:
    """Send ``count`` requests, SIGTERM once all are in flight; return their responses, the exit code, the log,
    and what /readyz and a new request got during the drain. One request first, alone: admission learns
    from it what such a request costs (before it, a cautious prior could refuse some of the burst)."""
    server, url = start_server(served_store, log, K2D_MODELS=json.dumps([model]),
                               K2D_REQUEST_TIMEOUT_S=f"{timeout_s:.0f}")
    responses: list = [None] * count
    during: dict = {}
    wait_s = timeout_s + 60
    try:
        first = httpx.post(url + "/transcribe", files={"file": ("long.flac", audio)}, data=fields, timeout=wait_s)
        assert first.status_code == 200, first.text

        def request(i: int) -> None:
            responses[i] = httpx.post(url + "/transcribe", files={"file": ("long.flac", audio)}, data=fields,
                                      timeout=wait_s)

        workers = [threading.Thread(target=request, args=(i,)) for i in range(count)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 60
        while in_flight(url) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        during["readyz"] = httpx.get(url + "/readyz")
        during["new"] = httpx.post(url + "/transcribe", files={"file": ("a.flac", audio)}, data=fields)
        for worker in workers:
            worker.join(timeout=wait_s)
        code = server.wait(timeout=wait_s)
        during["drain_s"] = time.monotonic() - signalled
        return responses, code, log.read_text(), during
    finally:
        if server.poll() is None:
            server.kill()


def timeout_for(count: int, alone_s: float) -> float:
    """A request timeout ``count`` requests queued at once meet three times over on this machine (at least 60 s)."""
    return max(60.0, 3 * count * alone_s)


def test_sigterm_drains_in_flight_requests_and_exits_0(served_store, tmp_path):
    speech = np.tile(decode_audio(DATA / "en_lecture.flac"), 8)  # ~27 s: one full window each
    audio = write_audio(tmp_path / "long.flac", speech).read_bytes()
    alone = seconds_per_request(served_store.store, "whisper-tiny.en", speech, vad=False, teacher=False)
    responses, code, log, during = run_drain(served_store, tmp_path / "server.log", audio, {"vad": "false"}, IN_FLIGHT,
                                             "whisper-tiny.en", timeout_for(IN_FLIGHT, alone))
    assert during["readyz"].status_code == 503 and during["readyz"].json()["draining"] is True
    assert during["new"].status_code == 503 and during["new"].json()["error"]["type"] == "shutting_down"
    assert [r.status_code for r in responses] == [200] * IN_FLIGHT, [r.text for r in responses if r.status_code != 200]
    assert all("gradient descent" in r.json()["text"].lower() for r in responses)
    assert code == 0, log
    assert "draining 16 request(s)" in log and "Application shutdown complete" in log, log
    print(f"\nSIGTERM with {IN_FLIGHT} requests in flight: {IN_FLIGHT} x 200, exit {code} after {during['drain_s']:.1f} s")


@pytest.mark.slow
def test_sigterm_waits_longer_than_uvicorns_default_grace(served_store, tmp_path):
    """Requests that need more than uvicorn's 30 s default still finish: the grace follows the request timeout.
    As many requests as this machine needs about 90 s for (4 to 16), so the drain is long however fast it is."""
    speech = np.tile(decode_audio(DATA / "zh_lecture.flac"), 6)  # ~41 s of Mandarin: two windows each
    audio = write_audio(tmp_path / "long.flac", speech).read_bytes()
    fields = {"language": "zh", "vad": "false", "beam_size": "5"}
    alone = seconds_per_request(served_store.store, "whisper-base", speech, "zh", vad=False)
    count = min(IN_FLIGHT, max(4, math.ceil(90 / alone)))
    responses, code, log, during = run_drain(served_store, tmp_path / "server.log", audio, fields, count,
                                             "whisper-base", timeout_for(count, alone))
    print(f"\nSIGTERM with {count} teacher requests in flight ({alone:.1f} s each alone): exit {code} after "
          f"{during['drain_s']:.0f} s")
    assert [r.status_code for r in responses] == [200] * count and all("模型" in r.json()["text"] for r in responses)
    assert code == 0, log
