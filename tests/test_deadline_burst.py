"""A burst of long uploads against a real ``k2d serve`` (tiny.en as the student, Whisper base as its teacher
behind it): more work than the deadline allows gets answers in time for the requests admitted and fast
429s with a truthful Retry-After for the rest, never a 503 timeout; SIGTERM during such a burst drains
every admitted request and exits 0. The deadline and the burst are sized from this machine's measured
speed (``tests.machine``), so the test means the same on a fast CPU and a slow one."""

from __future__ import annotations

import math
import signal
import threading
import time

import httpx
import pytest

from tests.machine import flac, long_speech, seconds_per_request
from tests.test_shutdown import start_server

pytestmark = pytest.mark.slow
CLIP_S = 30.0  # a long upload: VAD cuts it into windows; tiny.en loops on its Mandarin, so its teacher steps in
FITS = 6  # the deadline: about this many requests served one after another (at least MIN_TIMEOUT_S)
MIN_TIMEOUT_S = 10.0  # a floor on a very fast machine: HTTP and an upload's decoding are not free


@pytest.fixture(scope="module")
def burst_server(served_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("burst")
    speech = long_speech(CLIP_S)
    alone = seconds_per_request(served_store.store, "whisper-tiny.en", speech)
    timeout = max(MIN_TIMEOUT_S, FITS * alone)
    server, url = start_server(served_store, folder / "server.log", K2D_REQUEST_TIMEOUT_S=f"{timeout:.1f}")
    audio = flac(folder / "long.flac", speech)
    try:
        warm = post(url, audio)  # the first request measures the cost admission estimates from
        assert warm.status == 200, warm
        print(f"\none {CLIP_S:.0f} s request: {alone:.1f} s in-process, {warm.seconds:.1f} s through the server; "
              f"deadline {timeout:.1f} s")
        yield server, url, audio, timeout, 3 * math.ceil(timeout / alone), folder / "server.log"  # far more than fit
    finally:
        if server.poll() is None:
            server.kill()


class Answer:
    def __init__(self, response: httpx.Response, started: float, sent: float):
        self.status, self.seconds, self.sent = response.status_code, time.monotonic() - started, sent
        self.retry_after = response.headers.get("Retry-After")
        self.kind = response.json()["error"]["type"] if response.status_code >= 400 else None

    def __repr__(self) -> str:
        return f"{self.status} ({self.kind}) in {self.seconds:.1f} s, Retry-After {self.retry_after}"


def post(url: str, audio: bytes, t0: float | None = None) -> Answer:
    started = time.monotonic()
    response = httpx.post(url + "/transcribe", files={"file": ("long.flac", audio)}, timeout=600)
    return Answer(response, started, started - (t0 or started))


def burst(url: str, audio: bytes, count: int, retry: bool = False) -> tuple[list, list, list[threading.Thread]]:
    """``count`` uploads at once; with ``retry``, the first one refused comes back after its Retry-After."""
    answers: list = [None] * count
    retries: list[Answer] = []
    t0 = time.monotonic()

    def client(i: int) -> None:
        answers[i] = post(url, audio, t0)
        if retry and answers[i].status == 429 and not retries:
            retries.append(answers[i])
            for _ in range(3):
                time.sleep(int(retries[-1].retry_after))
                retries.append(post(url, audio, t0))
                if retries[-1].status != 429:
                    return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return answers, retries, threads


def metric(url: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in httpx.get(url + "/metrics").text.splitlines()
               if line.startswith(name + "{"))


def test_a_burst_gets_answers_in_time_and_fast_429s_never_timeouts(burst_server):
    _, url, audio, timeout, count, _ = burst_server
    answers, retries, threads = burst(url, audio, count, retry=True)
    for thread in threads:
        thread.join(timeout=3 * timeout + 60)
    statuses = [a.status for a in answers]
    ok, refused = [a for a in answers if a.status == 200], [a for a in answers if a.status == 429]
    print(f"\n{count} x {CLIP_S:.0f} s at once, deadline {timeout:.1f} s: {len(ok)} x 200 (slowest "
          f"{max(a.seconds for a in ok):.1f} s), {len(refused)} x 429 (slowest {max(a.seconds for a in refused):.2f} s, "
          f"Retry-After {sorted(int(a.retry_after) for a in refused)}); retried: {retries[1:]}")
    assert set(statuses) <= {200, 429}, answers
    assert len(ok) >= math.floor(FITS / 2), answers  # admission is not so cautious it wastes the deadline
    assert refused, answers  # the premise: not everything fits
    assert all(a.seconds <= timeout for a in ok), answers
    for answer in refused:
        assert answer.kind == "overloaded" and answer.retry_after.isdigit() and 1 <= int(answer.retry_after) <= timeout
        assert answer.seconds < timeout / 4, answer  # refused fast, not after waiting for its deadline
    assert retries[-1].status == 200, retries  # the Retry-After was truthful: coming back then, it was served
    assert not any('status="503"' in line for line in httpx.get(url + "/metrics").text.splitlines()
                   if line.startswith("k2d_requests_total")), "a request timed out"


def test_sigterm_during_a_burst_drains_every_admitted_request(burst_server):
    server, url, audio, timeout, count, log = burst_server
    answers, _, threads = burst(url, audio, count)
    decided = time.monotonic() + timeout
    while time.monotonic() < decided:  # every request either refused or admitted: then the signal
        answered = sum(1 for a in answers if a is not None)  # refused (or, already, served)
        if answered + metric(url, "k2d_admitted_requests") >= count:
            break
        time.sleep(0.05)
    server.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    for thread in threads:
        thread.join(timeout=3 * timeout + 60)
    code = server.wait(timeout=3 * timeout + 60)
    drained = time.monotonic() - signalled
    ok = [a for a in answers if a is not None and a.status == 200]
    print(f"\nSIGTERM during {count} x {CLIP_S:.0f} s: {len(ok)} x 200, "
          f"{sum(a is not None and a.status == 429 for a in answers)} x 429, exit {code} after {drained:.1f} s")
    # every admitted request got the answer its route gave: none cut off by the shutdown ("shutting_down", or a
    # dropped connection, which raises in its client thread and leaves None). Whether admission kept every
    # deadline is the burst test's claim above; here, on a busy 2-core runner, an admitted request that ran
    # past its deadline answers 503 "timeout" as it would without the signal, and says nothing about draining.
    cut = [a for a in answers if a is None or (a.status not in (200, 429) and a.kind != "timeout")]
    assert not cut, answers
    assert ok, answers
    assert code == 0, log.read_text()[-3000:]
    assert drained <= timeout + 10  # the grace (request timeout + 10 s) covers every admitted deadline
