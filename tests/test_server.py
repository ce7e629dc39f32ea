"""The real service: uvicorn on a free loopback port, real models, real HTTP, real Prometheus text."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from k2d.audio import decode_audio, write_audio
from k2d.scoring import mer
from tests.conftest import DATA, MANIFEST, free_port, running_server


@pytest.fixture(scope="module")
def server(served_store):
    settings = Settings(models_dir=served_store.store, port=free_port(), max_batch_size=8, max_wait_ms=50,
                        cpu_threads=2)
    with running_server(settings) as (url, app):
        yield url, app


def post(url: str, clip: str, path: str = "/transcribe", **fields) -> httpx.Response:
    with open(DATA / clip, "rb") as fh:
        return httpx.post(url + path, files={"file": (clip, fh)}, data=fields, timeout=120)


def test_health_ready_and_models(server):
    url, _ = server
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(url + "/readyz").json()["ready"] is True
    listed = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
    assert listed["whisper-tiny.en"]["default"] and listed["whisper-base"]["role"] == "teacher"


def test_transcribe_every_clip_in_json(server):
    url, _ = server
    for line in MANIFEST.read_text().splitlines():
        row = json.loads(line)
        body = post(url, row["audio"], model="whisper-base", language=row["language"] or "").json()
        assert body["model"] == "whisper-base" and body["duration"] > 1
        timings = body["timings"]
        assert set(timings) == {"decode_ms", "vad_ms", "queue_ms", "inference_ms", "total_ms"}
        assert sum(v for k, v in timings.items() if k != "total_ms") <= timings["total_ms"] + 0.5  # parts add up
        if row["audio"] == "silence.flac":
            assert body["text"] == "" and body["segments"] == []  # VAD: no speech, no hallucination
        else:
            assert body["text"] and body["segments"][0]["start"] >= 0
    english = post(url, "en_lecture.flac").json()  # the default model (the student's seat)
    assert english["model"] == "whisper-tiny.en" and "gradient descent" in english["text"].lower()


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt", "verbose_json", "json"])
@pytest.mark.parametrize("path", ["/transcribe", "/v1/audio/transcriptions"])
def test_response_formats(server, fmt, path):
    url, _ = server
    response = post(url, "en_lecture.flac", path=path, response_format=fmt)
    assert response.status_code == 200
    if fmt == "text":
        assert "gradient" in response.text.lower()
    elif fmt == "srt":
        assert response.text.startswith("1\n00:00:0") and " --> " in response.text
    elif fmt == "vtt":
        assert response.text.startswith("WEBVTT\n\n00:00:0")
    elif fmt == "verbose_json" or path == "/transcribe":
        assert response.json()["segments"] and response.json()["language"] == "en"
    else:
        assert list(response.json()) == ["text"]  # OpenAI's plain json


def test_eight_concurrent_requests_are_batched_and_match_serial_output(server):
    url, app = server
    # batching itself is under test, not the per-call work bound (on a busy CPU one base window can exceed it)
    scheduler = app.state.models.models["whisper-base"].scheduler
    bound, scheduler.max_batch_s = scheduler.max_batch_s, 0
    try:
        _concurrent_matches_serial(url)
    finally:
        scheduler.max_batch_s = bound


def _concurrent_matches_serial(url: str) -> None:
    clips = ["mixed_gradient.flac", "zh_lecture.flac", "mixed_loss.ogg", "mixed_batch.mp3"] * 2
    serial = [post(url, c, model="whisper-base", language="zh", beam_size="1").json()["text"] for c in clips]

    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            async def one(clip):
                files = {"file": (clip, (DATA / clip).read_bytes())}
                data = {"model": "whisper-base", "language": "zh", "beam_size": "1"}
                return (await client.post(url + "/transcribe", files=files, data=data)).json()
            return await asyncio.gather(*(one(c) for c in clips))

    before = _batch_stats(url)
    concurrent = asyncio.run(burst())
    after = _batch_stats(url)
    # CTranslate2's int8 kernels are not batch-invariant (a borderline clip can decode differently beside
    # others), so each concurrent answer must be its own clip's transcript, not byte-equal to the serial one
    for clip, answer, alone in zip(clips, concurrent, serial, strict=True):
        own = mer(alone, answer["text"])
        assert all(own <= mer(other, answer["text"]) for c, other in zip(clips, serial, strict=True) if c != clip)
    assert sum(a["text"] == b for a, b in zip(concurrent, serial, strict=True)) >= 6
    windows, batches = after[0] - before[0], after[1] - before[1]
    assert windows == 8 and batches < 8  # at least one generate() call served several requests


def _batch_stats(url: str) -> tuple[float, float]:
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    samples = [s for s in families["k2d_batch_size"].samples if s.labels.get("model") == "whisper-base"]
    total = sum(s.value for s in samples if s.name == "k2d_batch_size_sum")
    count = sum(s.value for s in samples if s.name == "k2d_batch_size_count")
    return total, count


def test_metrics_parse_and_show_the_student_speedup(server):
    url, _ = server
    post(url, "en_lecture.flac")
    post(url, "en_lecture.flac", model="whisper-base")
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    for name in ("k2d_requests", "k2d_request_seconds", "k2d_queue_seconds", "k2d_batch_size", "k2d_audio_seconds",
                 "k2d_inference_seconds", "k2d_generated_tokens", "k2d_queue_depth", "k2d_in_flight_requests",
                 "k2d_rtfx", "k2d_student_speedup"):
        assert name in families, name
    speedup = families["k2d_student_speedup"].samples[0]
    assert speedup.labels == {"student": "whisper-tiny.en", "teacher": "whisper-base"} and speedup.value > 0


def _bad_inputs(url: str) -> list[tuple[httpx.Response, int]]:
    garbage = httpx.post(url + "/transcribe", files={"file": ("x.wav", b"RIFF not really a wav file" * 50)})
    empty = httpx.post(url + "/transcribe", files={"file": ("empty.wav", b"")})
    return [
        (garbage, 415), (empty, 400),
        (post(url, "en_lecture.flac", beam_size="0"), 422),
        (post(url, "en_lecture.flac", beam_size="many"), 422),
        (post(url, "en_lecture.flac", response_format="pdf"), 422),
        (post(url, "en_lecture.flac", temperature="7"), 422),
        (post(url, "en_lecture.flac", model="whisper-base", language="klingon"), 422),
        (post(url, "en_lecture.flac", language="zh"), 422),  # the English-only model
        (post(url, "en_lecture.flac", model="no-such-model"), 404),
        (httpx.post(url + "/transcribe", data={"model": "whisper-base"}), 422),  # no file
    ]


def test_bad_inputs_get_their_status_and_the_server_keeps_serving(server):
    url, _ = server
    for response, status in _bad_inputs(url):
        assert response.status_code == status, (status, response.text)
        assert response.json()["error"]["message"]
    assert post(url, "en_lecture.flac").status_code == 200
    assert httpx.get(url + "/readyz").status_code == 200


def test_an_engine_error_fails_only_its_batch(server):
    url, app = server
    engine = app.state.models.models["whisper-base"].scheduler.engine
    original = engine.transcribe_batch

    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    engine.transcribe_batch = broken
    try:
        failed = post(url, "en_lecture.flac", model="whisper-base")
        other_model = post(url, "en_lecture.flac")
    finally:
        engine.transcribe_batch = original
    assert failed.status_code == 500 and "simulated device failure" in failed.json()["error"]["message"]
    assert other_model.status_code == 200
    assert post(url, "en_lecture.flac", model="whisper-base").status_code == 200


def long_audio(seconds: float, tmp_path) -> bytes:
    speech = decode_audio(DATA / "en_lecture.flac")
    reps = int(seconds * 16000 / len(speech)) + 1
    return write_audio(tmp_path / f"long-{seconds}.wav", np.tile(speech, reps)[: int(seconds * 16000)]).read_bytes()


def test_limits_auth_and_queue_bound(served_store, tmp_path):
    settings = Settings(models_dir=served_store.store, port=free_port(), models=["whisper-tiny.en"], max_upload_mb=2,
                        max_audio_s=40, max_queue_windows=1, api_key="sesame")
    with running_server(settings) as (url, _):
        auth = {"Authorization": "Bearer sesame"}
        clip = {"file": ("a.flac", (DATA / "en_lecture.flac").read_bytes())}
        assert httpx.post(url + "/transcribe", files=clip).status_code == 401
        assert httpx.post(url + "/transcribe", files=clip, headers={"Authorization": "Bearer nope"}).status_code == 401
        big = httpx.post(url + "/transcribe", files={"file": ("big.wav", b"\0" * 2_500_000)}, headers=auth)
        assert big.status_code == 413 and "upload" in big.json()["error"]["message"]

        def chunks():  # a chunked multipart upload, no Content-Length: the limit must bite while streaming
            yield b'--k2d\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n'
            for _ in range(80):
                yield b"\0" * 32_768
            yield b"\r\n--k2d--\r\n"

        multipart = {**auth, "Content-Type": "multipart/form-data; boundary=k2d"}
        streamed = httpx.post(url + "/transcribe", content=chunks(), headers=multipart)
        assert streamed.status_code == 413
        too_long = httpx.post(url + "/transcribe", files={"file": ("l.wav", long_audio(45, tmp_path))}, headers=auth)
        assert too_long.status_code == 413 and "limit" in too_long.json()["error"]["message"]
        two_windows = {"file": ("l.wav", long_audio(35, tmp_path))}
        queue_full = httpx.post(url + "/transcribe", files=two_windows, data={"vad": "false"}, headers=auth)
        assert queue_full.status_code == 429 and queue_full.headers["Retry-After"]
        assert httpx.post(url + "/transcribe", files=clip, headers=auth).status_code == 200


@pytest.mark.parametrize(("clip", "language"), [("en_lecture.flac", "en"), ("mixed_gradient.flac", "zh")])
def test_word_timestamps_are_ordered_and_inside_their_segment(server, clip, language):
    url, _ = server
    body = post(url, clip, model="whisper-base", language=language, word_timestamps="true").json()
    words = [w for seg in body["segments"] for w in seg["words"]]
    assert len(words) >= 4 and all(w["word"] and "\ufffd" not in w["word"] for w in words)
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["start"] <= w["end"] for w in words)
    for seg in body["segments"]:
        for w in seg["words"]:
            assert seg["start"] - 0.5 <= w["start"] <= seg["end"] + 0.5
    assert "".join(w["word"] for w in words).replace(" ", "") in body["text"].replace(" ", "") or language == "en"


def test_the_openai_client_transcribes_lists_models_and_streams(server):
    """What the README shows: the real ``openai`` client against /v1, every call it makes answered in its shape."""
    from openai import OpenAI

    url, _ = server
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    with open(DATA / "en_lecture.flac", "rb") as fh:
        plain = client.audio.transcriptions.create(model="whisper-1", file=fh)
    assert "gradient descent" in plain.text.lower()
    with open(DATA / "en_lecture.flac", "rb") as fh:
        verbose = client.audio.transcriptions.create(model="whisper-base", file=fh, response_format="verbose_json",
                                                     timestamp_granularities=["word", "segment"], language="en")
    assert verbose.segments and verbose.words and verbose.words[0].start <= verbose.words[-1].end
    with open(DATA / "en_lecture.flac", "rb") as fh:
        srt = client.audio.transcriptions.create(model="whisper-1", file=fh, response_format="srt")
    assert "-->" in srt
    with open(DATA / "en_lecture.flac", "rb") as fh:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=fh, stream=True))
    assert events[-1].type == "transcript.text.done" and events[-1].text.lower().startswith(plain.text.lower()[:10])
    assert {m.id for m in client.models.list()} == {"whisper-tiny.en", "whisper-base"}


def test_every_way_in_gives_the_same_transcript(server, served_store, tmp_path):
    """Sync JSON, the OpenAI shape, SSE, the Python API and the evaluation stage run one served model the same
    way (its windows, engine, guard and teacher fallback): the same clips give the same text everywhere."""
    import k2d
    from k2d.manifest import read_manifest
    from k2d_train.stages.s9_evaluate import EvaluateOptions, transcribe_manifest

    url, _ = server
    student = "whisper-tiny.en"
    local = k2d.load(student, store=served_store.store, cpu_threads=2)
    options = EvaluateOptions(use_manifest_language=False, cpu_threads=2)
    transcribe_manifest(student, MANIFEST, tmp_path / "hyp.jsonl", options, served_store.store)
    evaluated = {row.audio: row.text for row in read_manifest(tmp_path / "hyp.jsonl")}
    for row in read_manifest(MANIFEST):
        sync = post(url, row.audio).json()["text"]
        openai = post(url, row.audio, "/v1/audio/transcriptions", model=student).json()["text"]
        streamed = post(url, row.audio, stream="true").text.split("\n\n")
        done = json.loads([c for c in streamed if c.strip()][-1].removeprefix("data: "))
        api = local.transcribe(row.path(MANIFEST)).text
        assert sync == openai == done["text"] == api == evaluated[row.audio], row.audio


def test_the_teacher_behind_a_student_decodes_at_the_policys_teacher_context(served_store):
    """teacher_context (the server's K2D_TEACHER_CONTEXT) reaches the teacher standing in for a student's loops in
    the Python API and evaluation too; without it that teacher keeps Whisper's 30 s."""
    from k2d.context import ContextPolicy
    from k2d.policy import DecodePolicy
    from k2d.served import serve_one

    own = serve_one("whisper-tiny.en", served_store.store).teacher.engine.policy
    short = serve_one("whisper-tiny.en", served_store.store, DecodePolicy(teacher_context="1/1")).teacher.engine.policy
    assert own != short == ContextPolicy(1.0, 1.0)
    with pytest.raises(ValueError):
        DecodePolicy(teacher_context="soon")
