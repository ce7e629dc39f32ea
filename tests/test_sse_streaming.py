"""OpenAI parity on a real server: ``stream=true`` (Server-Sent Events), word granularity, ``prompt``."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from app.settings import Settings
from k2d.audio import decode_audio, write_audio
from tests.conftest import DATA, free_port, running_server

PATHS = ["/transcribe", "/v1/audio/transcriptions"]


@pytest.fixture(scope="module")
def server(served_store):
    settings = Settings(models_dir=served_store.store, port=free_port(), models=["whisper-tiny.en"], cpu_threads=2)
    with running_server(settings) as (url, _):
        yield url


@pytest.fixture(scope="module")
def two_windows(tmp_path_factory) -> bytes:
    """~45 s of speech: two windows without VAD, so the stream has more than one delta."""
    clip = decode_audio(DATA / "en_lecture.flac")
    return write_audio(tmp_path_factory.mktemp("audio") / "two.flac", np.tile(clip, 13)).read_bytes()


def events(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = [c for c in response.text.split("\n\n") if c.strip()]
    assert all(c.startswith("data: ") for c in chunks), chunks
    return [json.loads(c.removeprefix("data: ")) for c in chunks]


@pytest.mark.parametrize("path", PATHS)
def test_stream_sends_deltas_in_time_order_then_done(server, two_windows, path):
    fields = {"vad": "false"} if path == "/transcribe" else {}
    plain = httpx.post(server + path, files={"file": ("a.flac", two_windows)}, data={**fields, "response_format": "json"},
                       timeout=120).json()["text"]
    streamed = events(httpx.post(server + path, files={"file": ("a.flac", two_windows)},
                                 data={**fields, "stream": "true"}, timeout=120))
    deltas = [e["delta"] for e in streamed if e["type"] == "transcript.text.delta"]
    assert [e["type"] for e in streamed][-1] == "transcript.text.done"
    assert len(deltas) >= 2 and "".join(deltas) == streamed[-1]["text"] == plain


def test_stream_of_silence_is_just_done(server, tmp_path):
    silence = write_audio(tmp_path / "s.flac", np.zeros(5 * 16000, np.float32)).read_bytes()
    streamed = events(httpx.post(server + "/transcribe", files={"file": ("s.flac", silence)}, data={"stream": "true"}))
    assert streamed == [{"type": "transcript.text.done", "text": ""}]


def test_stream_errors_before_the_answer_keep_their_status(server):
    response = httpx.post(server + "/transcribe", files={"file": ("x.wav", b"not audio" * 100)}, data={"stream": "true"})
    assert response.status_code == 415 and response.json()["error"]["type"] == "unsupported_audio"


def test_word_granularity_gives_top_level_words(server):
    with open(DATA / "en_lecture.flac", "rb") as fh:
        clip = fh.read()
    for fmt in ("verbose_json", "json"):
        body = httpx.post(server + "/v1/audio/transcriptions", files={"file": ("a.flac", clip)}, timeout=120,
                          data={"response_format": fmt, "timestamp_granularities[]": ["word", "segment"]}).json()
        assert len(body["words"]) >= 4 and all(w["start"] <= w["end"] for w in body["words"]), body
        assert [w["start"] for w in body["words"]] == sorted(w["start"] for w in body["words"])
    plain = httpx.post(server + "/v1/audio/transcriptions", files={"file": ("a.flac", clip)}, timeout=120).json()
    assert list(plain) == ["text"]
    bad = httpx.post(server + "/v1/audio/transcriptions", files={"file": ("a.flac", clip)},
                     data={"timestamp_granularities[]": "sentence"})
    assert bad.status_code == 422


@pytest.mark.parametrize("path", PATHS)
def test_prompt_is_accepted_and_bounded(server, path):
    with open(DATA / "en_lecture.flac", "rb") as fh:
        clip = fh.read()
    prompted = httpx.post(server + path, files={"file": ("a.flac", clip)}, timeout=120,
                          data={"prompt": "Gradient descent, learning rate, loss function."})
    assert prompted.status_code == 200 and "gradient" in prompted.json()["text"].lower()
    too_long = httpx.post(server + path, files={"file": ("a.flac", clip)}, data={"prompt": "word " * 1000})
    assert too_long.status_code == 422
