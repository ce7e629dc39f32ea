"""Admission on a real server: past its queue bound, a model answers 429 from the request's headers,
before its upload is read, and the connection stays usable (the rest of the body is dropped)."""

from __future__ import annotations

import socket

import httpx
import pytest

from app.settings import Settings
from tests.conftest import DATA, free_port, running_server

KEY = "sesame"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIP = (DATA / "en_lecture.flac").read_bytes()


@pytest.fixture(scope="module")
def overloaded(served_store):
    """tiny.en alone, its queue bound at 0 windows: every transcription request is over it."""
    settings = Settings(models_dir=served_store.store, port=free_port(), models=["whisper-tiny.en"], api_key=KEY,
                        cpu_threads=1)
    with running_server(settings) as (url, app):
        app.state.models.models["whisper-tiny.en"].scheduler.max_queue = 0
        yield url, app


def read_response(sock: socket.socket) -> tuple[str, bytes]:
    """One HTTP/1.1 response (Content-Length framed): its head and its body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head.decode("latin-1"), body


def test_429_comes_before_the_upload_is_read_and_the_connection_survives(overloaded):
    url, _ = overloaded
    size = 4_000_000
    head = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n")
    tail = b"\r\n--b--\r\n"
    filler = size - len(head) - len(tail)
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=20) as sock:
        sock.sendall(f"POST /transcribe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {size}\r\n\r\n".encode() + head)
        status, body = read_response(sock)  # only the part headers were sent: the answer cannot wait for the rest
        assert status.startswith("HTTP/1.1 429") and b'"overloaded"' in body
        assert "retry-after:" in status.lower() and "connection: close" not in status.lower()
        sock.sendall(b"\0" * filler + tail)  # the client finishes its upload: no reset, the server drops it
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body = read_response(sock)
        assert status.startswith("HTTP/1.1 200") and b'"ok"' in body


def test_the_early_429_counts_and_does_not_skip_auth(overloaded):
    url, _ = overloaded
    before = _count(url, "429")
    refused = httpx.post(url + "/transcribe", files={"file": ("a.flac", CLIP)}, headers=AUTH, timeout=30)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "overloaded"
    assert int(refused.headers["Retry-After"]) >= 1
    assert _count(url, "429") == before + 1
    openai = httpx.post(url + "/v1/audio/transcriptions", files={"file": ("a.flac", CLIP)}, headers=AUTH, timeout=30)
    assert openai.status_code == 429
    stranger = httpx.post(url + "/transcribe", files={"file": ("a.flac", CLIP)}, headers={"Authorization": "Bearer no"},
                          timeout=30)
    assert stranger.status_code == 401  # never a hint about the load without the key
    assert httpx.get(url + "/readyz").status_code == 200


def _count(url: str, status: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(url + "/metrics", headers=AUTH).text)  # behind the key
    return sum(s.value for f in families for s in f.samples
               if s.name == "k2d_requests_total" and s.labels.get("status") == status)


def test_the_early_check_refuses_when_a_typical_request_would_not_fit():
    import time

    from app.admission import Admission
    from app.errors import OverloadedError
    from app.metrics import Metrics
    from tests.test_deadline_admission import model

    admission = Admission(Settings(max_queue_audio_s=60, device="cpu"), Metrics())
    busy, idle = model(), model()
    busy.scheduler.queued_audio_s = 55
    soon = time.monotonic() + 120
    admission.precheck("m", busy, soon)  # nothing seen yet: only an already full queue is refused early
    for _ in range(30):
        admission.admit("m", idle, 8.0, soon).close()  # the traffic: 8 s requests
    assert admission.typical_s("m") == pytest.approx(8.0, abs=0.1)
    with pytest.raises(OverloadedError):
        admission.precheck("m", busy, soon)  # 55 s + a typical 8 s is over 60 s: refused before the upload is read
    admission.admit("m", busy, 3.0, soon).close()  # the precise check still takes a 3 s request that fits
    busy.scheduler.queued_audio_s = 40
    admission.precheck("m", busy, soon)
    for _ in range(30):
        admission.admit("m", idle, 600.0, soon).close()  # a run of 10-minute uploads
    assert admission.typical_s("m") == 30.0  # at most one window: short requests still get the precise check
    admission.close()
