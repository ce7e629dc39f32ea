"""The engine contract: a new engine plugs into serving by implementing :class:`k2d.engine_contract.Engine` and
registering one factory — no edit to ``app/`` — and is then served over HTTP and by the Python API alike.

The engine here is a real, tiny one written for this test: it reports each window's length and its dominant
frequency (an FFT), which is enough to check that windows, languages and options flow through the real server
and the Python API the same way. Fast tier: no model store."""

from __future__ import annotations

import io
import re
import wave

import httpx
import numpy as np
import pytest

from app.settings import Settings
from k2d.context import ContextPolicy
from k2d.engine import DecodeOptions, Segment, WindowResult
from k2d.engine_contract import Capabilities, Engine, EngineSpec, engine_kinds, register_engine
from k2d.guard import GuardOptions, RepetitionPenalty
from k2d.registry import ModelEntry, Registry, Serving
from tests.conftest import DATA, free_port, running_server

RATE = 16000


class ToneEngine:
    """Says how long each window is and at which frequency it hums."""

    def __init__(self, spec: EngineSpec):
        self.capabilities = Capabilities(multilingual=False, prompts=False, translates=False)
        self.policy = spec.context or ContextPolicy(1.0, 1.0)
        self.workers, self.guard, self.repetition = 1, GuardOptions(enabled=False), RepetitionPenalty()

    def frames(self, window: np.ndarray) -> int:
        return self.policy.frames(len(window))

    def knows_language(self, language: str) -> bool:
        return language == "en"

    def encoder_ms(self, audio: np.ndarray) -> float:
        return 0.0

    def batch_options(self, options: DecodeOptions) -> tuple:
        return ()  # it honours no option: every window shares a call

    def transcribe_batch(self, windows: list[np.ndarray], languages: list[str | None],
                         options: DecodeOptions) -> list[WindowResult]:
        out = []
        for window in windows:
            spectrum = np.abs(np.fft.rfft(window))
            hertz = int(round(np.fft.rfftfreq(len(window), 1 / RATE)[int(spectrum.argmax())], -1))
            seconds = len(window) / RATE
            out.append(WindowResult("en", [Segment(0.0, seconds, f"{seconds:.1f} s at {hertz} Hz", [])], 0))
        return out


def tone_wav(hertz: float, seconds: float, silence_s: float = 0.0) -> bytes:
    """A tone, then ``silence_s`` of digital silence."""
    t = np.arange(int(seconds * RATE)) / RATE
    tone = (0.3 * np.sin(2 * np.pi * hertz * t) * 32767).astype("<i2")
    samples = np.concatenate([tone, np.zeros(int(silence_s * RATE), "<i2")])
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


@pytest.fixture
def tone_store(tmp_path):
    register_engine("test-tones", ToneEngine)
    (tmp_path / "tones").mkdir()
    registry = Registry(tmp_path)
    registry.add(ModelEntry(name="tones", format="custom", path="tones", serving=Serving(engine="test-tones")))
    return registry


def test_a_registered_engine_is_served_over_http_and_by_the_python_api_with_no_edit_to_app(tone_store):
    import k2d

    assert "test-tones" in engine_kinds()
    clip = DATA / "en_lecture.flac"  # real speech: the server's VAD keeps it (a pure tone it would drop as silence)
    settings = Settings(models_dir=tone_store.store, models=["tones"], port=free_port(), max_wait_ms=5)
    with running_server(settings) as (url, app):
        models = httpx.get(url + "/v1/models", timeout=30).json()["data"]
        assert [m["id"] for m in models] == ["tones"]
        answer = httpx.post(url + "/transcribe", files={"file": (clip.name, clip.read_bytes())}, timeout=60)
        assert answer.status_code == 200, answer.text
        served = answer.json()["text"]
        refused = httpx.post(url + "/transcribe", files={"file": (clip.name, clip.read_bytes())},
                             data={"prompt": "hello"}, timeout=60)
        assert refused.status_code == 422 and "prompt" in refused.text  # its capabilities, not its attributes
        french = httpx.post(url + "/transcribe", files={"file": (clip.name, clip.read_bytes())},
                            data={"language": "fr"}, timeout=60)
        assert french.status_code == 422
        hummed = httpx.post(url + "/transcribe", files={"file": ("hum.wav", tone_wav(880, 1.5), "audio/wav")}, timeout=60)
        assert hummed.status_code == 200 and hummed.json()["text"] == ""  # no speech: VAD sends it no window
    assert re.fullmatch(r"(\d+\.\d s at \d+ Hz ?)+", served), served
    local = k2d.load("tones", store=tone_store.store)
    assert isinstance(local.served.engine, Engine)
    assert local.transcribe(str(clip)).text == served  # the same windows through both paths
    hum = tone_store.store / "hum.wav"
    hum.write_bytes(tone_wav(880, 1.5))
    assert local.transcribe(str(hum)).text == ""  # and neither does the Python API


def test_every_path_cuts_the_same_windows_and_drops_silent_ones(tone_store):
    """Fixed windows (no VAD) over a tone then silence: the server and the Python API hand the engine the same
    windows, and neither hands it the silent ones (issue 31: the Python API sent silence to the model, where
    Whisper hallucinates, and the server did not)."""
    import k2d
    from k2d.policy import DecodePolicy

    clip = tone_store.store / "tone-then-silence.wav"
    clip.write_bytes(tone_wav(440, 45.0, silence_s=40.0))  # 30 s of tone, 15 s tone + 15 s silence, 25 s silence
    settings = Settings(models_dir=tone_store.store, models=["tones"], port=free_port(), max_wait_ms=5)
    with running_server(settings) as (url, _):
        answer = httpx.post(url + "/transcribe", files={"file": (clip.name, clip.read_bytes())}, data={"vad": "false"},
                            timeout=60)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    local = k2d.load("tones", store=tone_store.store, policy=DecodePolicy(vad=False)).transcribe(str(clip))
    assert served["text"] == local.text == "30.0 s at 440 Hz 30.0 s at 440 Hz"
    assert [(s["start"], s["end"]) for s in served["segments"]] == [(s.start, s.end) for s in local.segments]
    assert len(local.windows) == 2 and served["language"] == local.language == "en"


def test_an_unknown_kind_is_a_clear_error(tmp_path):
    from k2d.served import serve_one

    (tmp_path / "m").mkdir()
    Registry(tmp_path).add(ModelEntry(name="m", format="custom", path="m", serving=Serving(engine="nobody")))
    with pytest.raises(ValueError, match="no engine for kind 'nobody'.*register_engine"):
        serve_one("m", tmp_path)


def test_the_transcript_language_is_one_deterministic_rule_on_every_path():
    """The server and the Python API both call it (issue 31: ``max(set(...), key=count)`` broke ties by hash)."""
    from k2d.transcribe import transcript_language

    assert transcript_language(["en", "zh", "zh", "en"], None) == "en"  # a tie: the language heard first
    assert transcript_language(["zh", "en", "en", "zh"], None) == "zh"
    assert transcript_language(["en", "zh", "zh"], "en") == "zh"
    assert transcript_language([], "zh") == "zh" and transcript_language([], None) == "en"
