"""SIGTERM while requests are in flight: /readyz and new requests get 503 at once, every in-flight
request still completes with 200, then the process exits 0 (``k2d serve`` as a real subprocess)."""

from __future__ import annotations

import json
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


def run_drain(served_store, log: Path, audio: bytes, fields: dict, count: int,
              model: str) -> tuple[list, int, str, dict]:
    """Send ``count`` requests, SIGTERM once all are in flight; return their responses, the exit code, the log,
    and what /readyz and a new request got during the drain."""
    server, url = start_server(served_store, log, K2D_MODELS=json.dumps([model]))
    responses: list = [None] * count
    during: dict = {}
    try:
        def request(i: int) -> None:
            responses[i] = httpx.post(url + "/transcribe", files={"file": ("long.flac", audio)}, data=fields,
                                      timeout=300)

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
            worker.join(timeout=300)
        code = server.wait(timeout=60)
        during["drain_s"] = time.monotonic() - signalled
        return responses, code, log.read_text(), during
    finally:
        if server.poll() is None:
            server.kill()


def test_sigterm_drains_in_flight_requests_and_exits_0(served_store, tmp_path):
    clip = decode_audio(DATA / "en_lecture.flac")
    audio = write_audio(tmp_path / "long.flac", np.tile(clip, 8)).read_bytes()  # ~27 s: one full window each
    responses, code, log, during = run_drain(served_store, tmp_path / "server.log", audio, {"vad": "false"}, IN_FLIGHT,
                                             "whisper-tiny.en")
    assert during["readyz"].status_code == 503 and during["readyz"].json()["draining"] is True
    assert during["new"].status_code == 503 and during["new"].json()["error"]["type"] == "shutting_down"
    assert [r.status_code for r in responses] == [200] * IN_FLIGHT, [r.text for r in responses if r.status_code != 200]
    assert all("gradient descent" in r.json()["text"].lower() for r in responses)
    assert code == 0, log
    assert "draining 16 request(s)" in log and "Application shutdown complete" in log, log
    print(f"\nSIGTERM with {IN_FLIGHT} requests in flight: {IN_FLIGHT} x 200, exit {code} after {during['drain_s']:.1f} s")


@pytest.mark.slow
def test_sigterm_waits_longer_than_uvicorns_default_grace(served_store, tmp_path):
    """Requests that need more than uvicorn's 30 s default still finish: the grace follows the request timeout."""
    speech = np.tile(decode_audio(DATA / "zh_lecture.flac"), 6)  # ~41 s of Mandarin: two windows each
    audio = write_audio(tmp_path / "long.flac", speech).read_bytes()
    fields = {"language": "zh", "vad": "false", "beam_size": "5"}
    responses, code, log, during = run_drain(served_store, tmp_path / "server.log", audio, fields, IN_FLIGHT,
                                             "whisper-base")
    print(f"\nSIGTERM with {IN_FLIGHT} teacher requests in flight: exit {code} after {during['drain_s']:.0f} s")
    assert [r.status_code for r in responses] == [200] * IN_FLIGHT and all("模型" in r.json()["text"] for r in responses)
    assert code == 0, log
