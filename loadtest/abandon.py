"""Abandoned requests: how soon the server is idle once its clients have left.

Clients each upload a long file (``vad=false``: every 30 s is a window) and leave a moment after their
upload. From the moment the last client left, the server process must stop using CPU (< 5 % of a core over
0.25 s: no decode, no ``generate`` call left), its metrics must say nothing is in flight or queued, and
every request must count as a 499. ``tests/test_soak.py`` runs it (opt-in) against the harness's server.
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from loadtest.harness import REPO, metric_totals

IDLE_CPU_S = 0.0125  # CPU seconds per 0.25 s sample: 5 % of one core


def speech_wav(seconds: float) -> bytes:
    """``seconds`` of real speech (the English test clip, repeated) as a WAV upload."""
    from k2d.audio import decode_audio, write_audio  # reading and writing files, not talking to the app

    clip = decode_audio(REPO / "tests" / "data" / "en_lecture.flac")
    audio = np.tile(clip, int(seconds * 16000 / len(clip)) + 1)[: int(seconds * 16000)]
    with tempfile.TemporaryDirectory() as tmp:
        return write_audio(Path(tmp) / "speech.wav", audio).read_bytes()


def metrics(url: str) -> dict[str, float]:
    totals = metric_totals(url, {"k2d_in_flight_requests", "k2d_queue_depth", "k2d_audio_seconds_total",
                                 "k2d_requests_total"}, status="499")
    totals["k2d_requests_total_499"] = totals.pop("k2d_requests_total")
    return totals


def seconds_to_idle(pid: int, since: float, timeout: float = 120) -> float:
    """Seconds from ``since`` until the process used < 5 % of a core over a 0.25 s sample (its start)."""
    import psutil

    process = psutil.Process(pid)
    while time.monotonic() - since < timeout:
        start, before = time.monotonic(), sum(process.cpu_times()[:2])
        time.sleep(0.25)
        if sum(process.cpu_times()[:2]) - before < IDLE_CPU_S:
            return max(0.0, start - since)
    return timeout


def abandon_round(url: str, pid: int, audio: bytes, clients: int, seconds: float, leave_after: float) -> dict:
    """``clients`` clients each upload ``audio`` (``seconds`` long) and leave ``leave_after`` s after sending it."""
    before = metrics(url)
    left: list[float] = []
    answered: list[int] = []

    def client() -> None:
        timeout = httpx.Timeout(30.0, read=leave_after)  # the read timer starts once the upload is sent
        try:
            response = httpx.post(url + "/transcribe", files={"file": ("speech.wav", io.BytesIO(audio))},
                                  data={"vad": "false"}, timeout=timeout)
            answered.append(response.status_code)
        except httpx.TimeoutException:
            pass
        left.append(time.monotonic())

    threads = [threading.Thread(target=client) for _ in range(clients)]  # ``clients`` stays the count used below
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    last_left = max(left)
    idle_s = seconds_to_idle(pid, last_left)
    deadline = time.monotonic() + 10  # the 499s are counted when each request's task has ended
    while (after := metrics(url))["k2d_requests_total_499"] < before["k2d_requests_total_499"] + clients \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    uploaded = clients * seconds
    return {"idle_after_last_client_left_s": round(idle_s, 2), "answered_before_leaving": answered,
            "abandoned_499": after["k2d_requests_total_499"] - before["k2d_requests_total_499"],
            "in_flight_then": after["k2d_in_flight_requests"], "queued_windows_then": after["k2d_queue_depth"],
            "audio_s_transcribed": round(after["k2d_audio_seconds_total"] - before["k2d_audio_seconds_total"], 1),
            "audio_s_uploaded": uploaded}
