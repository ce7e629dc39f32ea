"""The realtime stream's buffer and message parsing, without a model: windows identical to the ones
training cuts, work per second of audio that stays flat over a 10-minute stream, and every malformed
message turned into an error event (``StreamError``), never an exception that drops the socket.
(A real socket with a trained streaming student: ``tests/test_ctc_student.py``.)
"""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from app.routers.realtime import MAX_MESSAGE_BYTES, StreamError, audio_of, message_bytes
from k2d.streaming import StreamBuffer, StreamWindows

RATE = 16000
FRAME = 320  # 20 ms


def windows_of(buffer: StreamBuffer) -> list[tuple[np.ndarray, int]]:
    return list(buffer.ready())


@pytest.mark.parametrize("sizes", [[FRAME], [1, 7, 0, 10_240, 3], [40_000], [10_240], [5_000, 20_000, 333]])
def test_the_buffer_cuts_exactly_the_windows_training_cuts(sizes):
    windows = StreamWindows()
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(RATE * 7 + 123).astype(np.float32)
    buffer, got, position, turn = StreamBuffer(windows), [], 0, 0
    while position < len(audio):
        size = sizes[turn % len(sizes)]
        buffer.append(audio[position : position + size])
        position, turn = position + size, turn + 1
        got += windows_of(buffer)
    rest = buffer.rest()
    got += [rest] if rest is not None else []
    assert buffer.rest() is None
    expected = [windows.window(audio, i) for i in range(windows.chunks(len(audio)))]
    assert len(got) == len(expected)
    for (window, first), (want, want_first) in zip(got, expected, strict=True):
        assert first == want_first and np.array_equal(window, want)


def test_ten_minutes_of_20_ms_frames_cost_the_same_per_minute():
    """Samples copied (deterministic) per minute of audio: flat, about (left + chunk) / chunk per sample;
    the old buffer re-copied the whole stream on every frame (~n² / 2 samples: 2.9e11 for 10 minutes)."""
    windows = StreamWindows()
    buffer, frame = StreamBuffer(windows), np.zeros(FRAME, np.float32)
    per_minute, cpu, held = [], [], 0
    frames_per_minute = 60 * RATE // FRAME
    for _ in range(10):
        copied, started = buffer.copied, time.process_time()
        for _ in range(frames_per_minute):
            buffer.append(frame)
            for _ in buffer.ready():
                pass
            held = max(held, buffer.held)
        per_minute.append(buffer.copied - copied)
        cpu.append(time.process_time() - started)
    print(f"samples copied per minute: {per_minute}; CPU s per minute: {[round(c, 3) for c in cpu]}")
    total = 10 * 60 * RATE
    assert buffer.total == total
    window = windows.left_samples + windows.chunk_samples
    # flat to within two windows' copies: a minute holds 93 or 94 chunks, and the stream's first two chunks
    # have less left context; a quadratic buffer would copy ~10x more in the tenth minute than in the first
    assert max(per_minute) - min(per_minute) <= 2 * window
    ratio = (windows.left_samples + windows.chunk_samples) / windows.chunk_samples
    assert buffer.copied <= ratio * total
    assert held <= windows.left_samples + windows.chunk_samples + FRAME  # memory: one window, however long


def event(**fields) -> dict:
    return {"type": "websocket.receive", "text": json.dumps(fields)}


MALFORMED = {
    "no type, audio a number": event(audio=123),
    "not JSON": {"type": "websocket.receive", "text": "not json"},
    "nested 100k deep": {"type": "websocket.receive", "text": "[" * 100_000},
    "nested objects": {"type": "websocket.receive", "text": '{"a":' * 50_000 + "1" + "}" * 50_000},
    "audio a number": event(type="input_audio_buffer.append", audio=123),
    "audio a list": event(type="input_audio_buffer.append", audio=[1, 2]),
    "audio an object": event(type="input_audio_buffer.append", audio={"b": "AAAA"}),
    "audio missing": event(type="input_audio_buffer.append"),
    "audio not base64": event(type="input_audio_buffer.append", audio="!!!"),
    "audio odd bytes": event(type="input_audio_buffer.append", audio=base64.b64encode(b"\0\0\0").decode()),
    "type a number": event(type=5),
    "type a list": event(type=["input_audio_buffer.commit"]),
    "type huge": event(type="x" * 100_000),
    "a list": {"type": "websocket.receive", "text": "[]"},
    "null": {"type": "websocket.receive", "text": "null"},
    "a string": {"type": "websocket.receive", "text": '"input_audio_buffer.commit"'},
    "empty text": {"type": "websocket.receive", "text": ""},
    "neither text nor bytes": {"type": "websocket.receive"},
    "half a sample": {"type": "websocket.receive", "bytes": b"\x00"},
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_every_malformed_message_is_an_error_event(name):
    with pytest.raises(StreamError) as err:
        audio_of(MALFORMED[name])
    assert 0 < len(str(err.value)) < 200  # a short message for the error event, never the input echoed whole


def test_good_messages_still_carry_audio():
    pcm = (np.arange(320) % 100).astype("<i2").tobytes()
    assert len(audio_of({"type": "websocket.receive", "bytes": pcm})) == 320
    appended = audio_of(event(type="input_audio_buffer.append", audio=base64.b64encode(pcm).decode()))
    assert len(appended) == 320 and appended.dtype == np.float32
    assert audio_of(event(type="input_audio_buffer.commit")) is None


def test_the_message_limit_counts_bytes_not_characters():
    cjk = "字" * (MAX_MESSAGE_BYTES // 2)  # half a MiB of characters, 1.5 MiB of UTF-8
    assert message_bytes({"text": cjk}) == 3 * len(cjk) > MAX_MESSAGE_BYTES
    assert message_bytes({"text": "a" * 1000}) == 1000
    assert message_bytes({"bytes": b"\0" * 10}) == 10
