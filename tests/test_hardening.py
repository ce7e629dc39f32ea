"""Service hardening on a real server with real models: each test is an attack or a mistake a client
can make, and asserts the behaviour (status, that work stops, what is counted) — never a tight time.

Figures worth reporting (seconds, RSS growth) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

import httpx
import numpy as np
import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.settings import Settings
from k2d.audio import decode_audio, write_audio
from tests.conftest import DATA, REPO, free_port, running_server

KEY = "sesame"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIP = (DATA / "en_lecture.flac").read_bytes()


@pytest.fixture(scope="module")
def server(served_store):
    settings = Settings(models_dir=served_store.store, port=free_port(), api_key=KEY, cpu_threads=2, max_wait_ms=20)
    with running_server(settings) as (url, app):
        yield url, app


def post(url: str, data: bytes = CLIP, name: str = "clip.flac", headers: dict | None = None, timeout: float = 120,
         **fields) -> httpx.Response:
    return httpx.post(url + "/transcribe", files={"file": (name, data)}, data=fields,
                      headers=AUTH if headers is None else headers, timeout=timeout)


def metric(url: str, name: str, **labels) -> float:
    """Sum of the samples of one metric whose labels include ``labels``."""
    families = text_string_to_metric_families(httpx.get(url + "/metrics", headers=AUTH).text)  # behind the key
    return sum(s.value for f in families for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def speech(seconds: float) -> np.ndarray:
    clip = decode_audio(DATA / "en_lecture.flac")
    return np.tile(clip, int(seconds * 16000 / len(clip)) + 1)[: int(seconds * 16000)]


def flac_bomb(tmp_path, hours: float = 10, rate: int = 100, declared: bool = True) -> bytes:
    """Hours of silence at a tiny sample rate: a few hundred kB that decode to gigabytes at 16 kHz.
    ``declared=False`` zeroes STREAMINFO's sample count, so only incremental decoding can catch it."""
    data = bytearray(write_audio(tmp_path / "bomb.flac", np.zeros(int(hours * 3600 * rate), np.float32), rate).read_bytes())
    if not declared:
        data[8 + 13] &= 0xF0  # STREAMINFO: the 36-bit total-samples field starts in the low nibble of byte 13
        data[8 + 14 : 8 + 18] = b"\0\0\0\0"
    return bytes(data)


def float_wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """A WAVE_FORMAT_IEEE_FLOAT file, by hand: the one common format that can carry NaN and Inf."""
    body = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(body)) + b"WAVE" + b"fmt " + struct.pack(
        "<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body


def wav(tmp_path, audio: np.ndarray) -> bytes:
    return write_audio(tmp_path / f"speech-{len(audio)}.wav", audio).read_bytes()


def wait_idle(timeout: float = 60) -> float:
    """Seconds until this process (the server runs in it) stops using CPU: < 5 % of a core over 0.25 s."""
    process, started = psutil.Process(), time.monotonic()
    while time.monotonic() - started < timeout:
        before = sum(process.cpu_times()[:2])
        time.sleep(0.25)
        if sum(process.cpu_times()[:2]) - before < 0.0125:
            return time.monotonic() - started - 0.25
    return timeout


def peak_rss_during(action) -> tuple[object, float]:
    """Run ``action`` while sampling this process's RSS; return its result and the growth in MB."""
    process, peak, done = psutil.Process(), [0], threading.Event()
    before = process.memory_info().rss

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return result, max(0, peak[0] - before) / 1e6


@pytest.mark.parametrize("declared", [True, False])
def test_a_decompression_bomb_is_refused_without_decoding_it(server, tmp_path, declared):
    url, _ = server
    bomb = flac_bomb(tmp_path, declared=declared)
    assert len(bomb) < 3_000_000
    started = time.monotonic()
    response, growth_mb = peak_rss_during(lambda: post(url, bomb, "bomb.flac"))
    elapsed = time.monotonic() - started
    print(f"\nbomb ({len(bomb) / 1e3:.0f} kB, 10 h, header {'declares' if declared else 'hides'} its length): "
          f"{response.status_code} in {elapsed:.2f} s, RSS +{growth_mb:.0f} MB")
    assert response.status_code == 413 and response.json()["error"]["type"] == "audio_too_long"
    assert growth_mb < 500  # decoding it whole took 6 GB; the limit's worth is ~40 MB


def test_nan_samples_are_a_clear_400_and_silence_is_empty_without_inference(server, tmp_path):
    url, _ = server
    broken = np.zeros(16000, np.float32)
    broken[100] = np.nan
    response = post(url, float_wav(broken), "nan.wav")
    assert response.status_code == 400 and "NaN" in response.json()["error"]["message"]
    broken[100] = np.inf
    assert post(url, float_wav(broken), "inf.wav").status_code == 400
    silence = write_audio(tmp_path / "silence.flac", np.zeros(600 * 16000, np.float32)).read_bytes()
    before = metric(url, "k2d_audio_seconds_total")
    body = post(url, silence, "silence.flac", vad="false").json()
    assert body["text"] == "" and body["segments"] == [] and body["duration"] == 600
    assert metric(url, "k2d_audio_seconds_total") == before  # no window reached the model


def test_auth_needs_a_bearer_key_and_never_errors(server):
    url, _ = server
    wrong = [{}, {"Authorization": KEY}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic c2VzYW1l"},
             {"Authorization": "Bearer sésame".encode()}, {"Authorization": "Bearer \xff\xfe".encode("latin-1")}]
    for headers in wrong:
        response = post(url, headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["type"] == "unauthorized" and response.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer ü".encode()}).status_code == 401
    assert post(url).status_code == 200


@pytest.mark.parametrize("language", ["endoftext", "0.00", "translate", "startoftranscript", "xx"])
def test_only_real_whisper_languages_are_accepted(server, language):
    url, _ = server
    response = post(url, model="whisper-base", language=language)
    assert response.status_code == 422 and "language" in response.json()["error"]["message"]


def test_role_aliases_and_translation_only_where_the_model_translates(server):
    url, _ = server
    assert post(url, model="student").json()["model"] == "whisper-tiny.en"
    assert post(url, model="teacher").json()["model"] == "whisper-base"
    refused = post(url, model="student", task="translate")
    assert refused.status_code == 422 and "translate" in refused.json()["error"]["message"]
    assert post(url, model="teacher", task="translate").status_code == 200


def test_segments_lie_inside_the_audio_and_timings_add_up(server):
    url, _ = server
    for model in ("whisper-tiny.en", "whisper-base"):
        body = post(url, model=model, word_timestamps="true").json()
        for seg in body["segments"]:
            assert 0 <= seg["start"] <= seg["end"] <= body["duration"]
            assert all(0 <= w["start"] <= w["end"] <= body["duration"] for w in seg["words"])
        assert body["words"] == [w for seg in body["segments"] for w in seg["words"]]
        timings = body["timings"]
        assert timings["queue_ms"] + timings["inference_ms"] + timings["decode_ms"] + timings["vad_ms"] \
            <= timings["total_ms"] + 0.5


def test_every_request_is_counted_with_its_status(server):
    url, _ = server
    before = {s: metric(url, "k2d_requests_total", status=s) for s in ("200", "401", "404", "413", "415", "422")}
    post(url)
    post(url, headers={})
    post(url, model="no-such-model")
    post(url, b"\0" * 30_000_000, "big.wav")
    post(url, b"not audio at all" * 100, "x.wav")
    post(url, beam_size="0")
    for status, count in before.items():
        assert metric(url, "k2d_requests_total", status=status) == count + 1, status
    assert metric(url, "k2d_requests_total", model="whisper-tiny.en", status="200") >= 1


def test_the_openapi_document_lists_every_status(server):
    url, _ = server
    paths = httpx.get(url + "/openapi.json", headers=AUTH).json()["paths"]
    for path in ("/transcribe", "/v1/audio/transcriptions"):
        listed = set(paths[path]["post"]["responses"])
        assert {"200", "400", "401", "404", "408", "413", "415", "422", "429", "503"} <= listed, path
        assert "text/event-stream" in paths[path]["post"]["responses"]["200"]["content"]
    assert "503" in paths["/readyz"]["get"]["responses"] and "401" in paths["/v1/models"]["get"]["responses"]


def test_abandoned_requests_stop_their_work_and_count_as_499(server, tmp_path):
    url, app = server
    audio = wav(tmp_path, speech(60))
    windows_before = metric(url, "k2d_audio_seconds_total", model="whisper-tiny.en")
    abandoned_before = metric(url, "k2d_requests_total", status="499")

    answered = []

    def leave_early():
        with contextlib.suppress(httpx.TimeoutException):
            answered.append(post(url, audio, "long.wav", timeout=0.5, vad="false").status_code)

    clients = [threading.Thread(target=leave_early) for _ in range(10)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    idle_after = wait_idle()
    deadline = time.monotonic() + 10
    while metric(url, "k2d_requests_total", status="499") < abandoned_before + 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    processed = metric(url, "k2d_audio_seconds_total", model="whisper-tiny.en") - windows_before
    print(f"\n10 abandoned 60 s requests: idle {idle_after:.1f} s after the clients left; "
          f"{processed:.0f} of 600 audio seconds transcribed")
    assert not answered, answered
    assert metric(url, "k2d_requests_total", status="499") == abandoned_before + 10
    assert not app.state.models.models["whisper-tiny.en"].scheduler.pending and processed < 600 / 2
    assert metric(url, "k2d_in_flight_requests") == 0


@pytest.mark.parametrize("models", [["whisper-tiny.en"], ["whisper-tiny.en", "whisper-base"]], ids=["alone", "pair"])
def test_admission_refuses_before_decoding_when_the_queue_is_full(served_store, tmp_path, models):
    """The student's queue is full: its requests get 429 at once (only one model: before the upload is even
    parsed); with the teacher served beside it, a request for the teacher is still served."""
    long = wav(tmp_path, speech(90))  # 3 windows: one runs, two (60 s) wait
    settings = Settings(models_dir=served_store.store, port=free_port(), models=models, max_batch_size=1,
                        max_queue_audio_s=45, cpu_threads=2)
    with running_server(settings) as (url, app):
        scheduler = app.state.models.models["whisper-tiny.en"].scheduler

        def fill_the_queue():  # then leave: the test needs the full queue, not the transcript
            with contextlib.suppress(httpx.TimeoutException):
                post(url, long, "long.wav", headers={}, vad="false", timeout=8)

        worker = threading.Thread(target=fill_the_queue)
        worker.start()
        deadline = time.monotonic() + 30
        while scheduler.queued_audio_s < 45 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        refused = post(url, headers={}, model="whisper-tiny.en")
        took = time.monotonic() - started
        other = post(url, headers={}, model="whisper-base") if len(models) > 1 else None
        worker.join()
    print(f"\n{len(models)} model(s): 429 answered in {took * 1000:.0f} ms, Retry-After {refused.headers['Retry-After']} s")
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "overloaded"
    assert int(refused.headers["Retry-After"]) >= 1
    assert other is None or other.status_code == 200


def test_the_deadline_covers_the_upload_and_the_work(served_store, tmp_path):
    settings = Settings(models_dir=served_store.store, port=free_port(), models=["whisper-base"], request_timeout_s=1.5,
                        cpu_threads=1)
    with running_server(settings) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:  # an upload that stalls half-way
            sock.sendall(b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
                         b"filename=\"a.wav\"\r\n\r\nRIFF")
            sock.settimeout(30)
            answer = sock.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 408") and "upload_timeout" in answer
        slow = post(url, wav(tmp_path, speech(60)), "long.wav", headers={}, vad="false", beam_size="5")
        assert slow.status_code == 503 and slow.json()["error"]["type"] == "timeout" and slow.headers["Retry-After"]


def test_k8s_grace_period_covers_the_drain():
    docs = list(yaml.safe_load_all((REPO / "deploy/k8s/k2d.yaml").read_text()))
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    grace = Settings(request_timeout_s=float(env.get("K2D_REQUEST_TIMEOUT_S", 120)),
                     shutdown_grace_s=env.get("K2D_SHUTDOWN_GRACE_S")).drain_grace_s
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + grace
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_settings_refuse_a_grace_shorter_than_a_request():
    with pytest.raises(ValueError, match="shutdown_grace_s"):
        Settings(request_timeout_s=120, shutdown_grace_s=30)
    assert Settings(request_timeout_s=120).drain_grace_s >= 120
    assert create_app(Settings(max_queue_audio_s=60)).state.admission.max_queue_s == 60
