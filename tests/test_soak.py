"""Reliability under load, against a real ``k2d serve`` process (opt-in: ``pytest -m soak``, minutes).

- soak: 64 closed-loop clients for 30 s with a small queue bound: no 5xx, 429s come back fast, the
  server drains and exits 0 on SIGTERM;
- abandon: ten clients leave a minute of audio each a second after uploading: the server is idle again
  within a few seconds, nothing in flight or queued, every request counted as a 499.
"""

from __future__ import annotations

import io
import json

import httpx
import pytest

from loadtest.abandon import abandon_round, speech_wav
from loadtest.harness import serving
from loadtest.soak import SoakOptions, soak

pytestmark = [pytest.mark.soak, pytest.mark.slow]


def test_a_bounded_queue_under_64_clients_answers_every_request_without_a_server_error(served_store):
    report = soak(SoakOptions(concurrency=64, duration=30, settings={"K2D_MODELS_DIR": str(served_store.store)}))
    print(json.dumps({k: report[k] for k in ("requests", "status_counts", "latency_429", "server_rss")}))
    assert report["requests"] > 64 and report["server_errors"] == 0 and report["server_exit_code"] == 0
    assert "429" in report["status_counts"]  # the overload path ran
    assert report["latency_429_after_upload_server_side"]["p90_ms"] < 500


def test_abandoned_uploads_leave_the_server_idle_within_seconds(served_store):
    audio = speech_wav(60)
    with serving({"K2D_MODELS_DIR": str(served_store.store), "K2D_CPU_THREADS": "2"}) as server:
        warm = httpx.post(server.url + "/transcribe", files={"file": ("speech.wav", io.BytesIO(audio))},
                          data={"vad": "false"}, timeout=300)
        warm.raise_for_status()
        found = abandon_round(server.url, server.pid, audio, clients=10, seconds=60, leave_after=1.0)
    print(json.dumps(found))
    # deadline admission answers what cannot finish in time with a fast 429 before the client leaves: those are
    # answered, not abandoned; every other client's request must be counted as a 499 and leave nothing behind
    answered = found["answered_before_leaving"]
    assert all(code == 429 for code in answered) and found["abandoned_499"] == 10 - len(answered)
    assert found["in_flight_then"] == 0 and found["queued_windows_then"] == 0 and found["abandoned_499"] >= 1
    assert found["idle_after_last_client_left_s"] < 10
    assert found["audio_s_transcribed"] < found["audio_s_uploaded"] / 2  # the abandoned work was dropped
