"""Guarded student serving on a real server: loop guard, teacher fallback, shadow scoring, harvest.

tiny.en sits in the student's seat beside its teacher, Whisper base (see ``served_store``): a real
small Whisper that is unsure where base is not, which is exactly when the cascade must act.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.batching import QueueFullError
from app.settings import Settings
from k2d.audio import write_audio
from k2d.engine import DecodeOptions, WindowResult
from k2d.guard import LOOP_REASONS, collapse_repeats
from k2d.manifest import read_manifest
from tests.conftest import DATA, free_port, running_server


def _tone(seconds: float = 8.0) -> bytes:
    """A pure tone: no speech, and a decoder that is not sure what to say about it."""
    samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(16000 * seconds)) / 16000)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        return write_audio(Path(folder) / "tone.flac", samples).read_bytes()


def _samples(url: str, name: str) -> dict[tuple, float]:
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families[name].samples}


def _total(url: str, name: str, **labels: str) -> float:
    return sum(v for (sample, got), v in _samples(url, name).items()
               if sample == f"{name}_total" and set(labels.items()) <= set(got))


def _looping_clip() -> bytes:
    """The Mandarin clip said three times over: tiny.en (English only) loops on it ("tien tien tien…")."""
    from k2d.audio import decode_audio

    samples = np.tile(decode_audio(DATA / "zh_lecture.flac"), 3)[: 16000 * 30]
    with tempfile.TemporaryDirectory() as folder:
        return write_audio(Path(folder) / "loop.flac", samples).read_bytes()


@pytest.mark.slow
def test_a_looping_student_window_falls_back_to_the_teacher(served_store):
    """A window the student loops on is re-decoded by the teacher and the answer is the teacher's own;
    a request that opts out gets the student's loop cut back instead; a merely unsure window (a tone:
    low log-probability, no loop) stays with the student by default."""
    settings = Settings(models_dir=served_store.store, port=free_port())
    files = {"file": ("loop.flac", _looping_clip())}
    data = {"vad": "false", "response_format": "verbose_json", "beam_size": "1", "language": "en"}
    with running_server(settings) as (url, _):
        body = httpx.post(url + "/transcribe", files=files, data={**data, "model": "whisper-tiny.en"}, timeout=180).json()
        assert _total(url, "k2d_guard_triggered", model="whisper-tiny.en") >= 1
        assert _total(url, "k2d_fallback", student="whisper-tiny.en", teacher="whisper-base") == 1
        teacher = httpx.post(url + "/transcribe", files=files, data={**data, "model": "whisper-base"}, timeout=180).json()
        assert body["text"] == teacher["text"] and all(s["fallback"] for s in body["segments"])
        alone = httpx.post(url + "/transcribe", files=files, timeout=180,
                           data={**data, "model": "whisper-tiny.en", "fallback": "false"}).json()
        assert _total(url, "k2d_fallback", student="whisper-tiny.en") == 1  # this request opted out
        assert not any(s["fallback"] for s in alone["segments"])
        assert _total(url, "k2d_guard_triggered", model="whisper-tiny.en", reason="trimmed") == 1
        assert alone["text"] and collapse_repeats(alone["text"]) == alone["text"]
        tone = httpx.post(url + "/transcribe", files={"file": ("tone.flac", _tone(20.0))}, timeout=180,
                          data={**data, "model": "whisper-tiny.en"}).json()
        assert not any(s["fallback"] for s in tone["segments"])
        assert _total(url, "k2d_fallback", student="whisper-tiny.en") == 1


@pytest.mark.slow
def test_shadow_scoring_measures_disagreement_and_harvests_a_corpus(served_store, tmp_path, registry):
    settings = Settings(models_dir=served_store.store, port=free_port(), shadow_fraction=1.0, harvest_dir=tmp_path / "h")
    with running_server(settings) as (url, _):
        with open(DATA / "en_lecture.flac", "rb") as fh:
            answer = httpx.post(url + "/transcribe", files={"file": fh}, data={"model": "whisper-tiny.en"}, timeout=120)
        assert answer.status_code == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shadow = _samples(url, "k2d_shadow_disagreement")
            if sum(v for (name, _), v in shadow.items() if name == "k2d_shadow_disagreement_count") >= 1:
                break
            time.sleep(0.5)
        else:
            pytest.fail("no shadow observation within 60 s")
        disagreement = sum(v for (name, _), v in shadow.items() if name == "k2d_shadow_disagreement_sum")
        assert 0 <= disagreement < 0.5  # tiny.en and base agree on this clear English sentence
    rows = list(read_manifest(tmp_path / "h" / "harvest.jsonl"))
    assert rows and "gradient" in rows[0].text.lower() and rows[0].path(tmp_path / "h" / "harvest.jsonl").exists()
    from k2d_train.stages.s2_pseudo_label import PseudoLabelOptions, pseudo_label

    result = pseudo_label("whisper-base", tmp_path / "h" / "harvest.jsonl", tmp_path / "pl", PseudoLabelOptions(beam_size=1),
                          registry.store)
    assert result["chunks"] >= 1  # the harvest is a corpus k2d run reads


def test_a_student_is_served_and_evaluated_with_its_own_repetition_penalty(served_store, tmp_path):
    """The penalty recorded in the student's registry entry reaches its engine in the server and in
    evaluation; its teacher keeps its own; an operator (or a compare contender) can override it."""
    from app.metrics import Metrics
    from app.model_manager import ModelManager
    from k2d.policy import DecodePolicy
    from k2d.registry import Registry
    from k2d_train.experiments.compare import Contender
    from k2d_train.stages.s9_evaluate import EvaluateOptions, served_transcriber

    store = Registry(tmp_path)
    for entry in served_store.entries():
        serving = replace(entry.serving, repetition_penalty=1.2) if entry.role == "student" else entry.serving
        store.add(replace(entry, serving=serving))
    manager = ModelManager(Settings(models_dir=tmp_path, port=free_port()), Metrics())
    manager.load()
    assert manager.models["whisper-tiny.en"].scheduler.engine.repetition.value == 1.2
    assert manager.models["whisper-base"].scheduler.engine.repetition.value == 1.0
    override = ModelManager(Settings(models_dir=tmp_path, port=free_port(), repetition_penalty=1.05,
                                     teacher_sampling="none"), Metrics())
    override.load()
    assert override.models["whisper-tiny.en"].scheduler.engine.repetition.value == 1.05
    assert manager.models["whisper-tiny.en"].cascade.rule.sampling == "all"
    cascade = override.models["whisper-tiny.en"].cascade
    submitted = []

    def full_queue(audios, language, options, background=False, ticket=None):
        submitted.append(options)
        raise QueueFullError("full")

    cascade.teacher_queue.submit = full_queue  # the teacher's queue sees the options the stand-in decodes with
    looping = WindowResult("en", [], 40, "token_budget", ["token_budget"], -0.2, escalate=True)
    asyncio.run(cascade._fall_back(looping, np.zeros(16000, np.float32), DecodeOptions(), 0.0, 0.0))
    assert [o.temperature_fallback for o in submitted] == ["none"]

    evaluated = served_transcriber("whisper-tiny.en", EvaluateOptions(language="en"), tmp_path)
    assert evaluated.engine.repetition.value == 1.2 and evaluated.served.teacher.engine.repetition.value == 1.0
    run = DecodePolicy()
    plain = Contender.parse("plain=whisper-tiny.en~none^1.0").policy(run)
    assert (plain.teacher_fallback, plain.repetition_penalty) == (False, 1.0)
    quick = Contender.parse("quick=whisper-tiny.en~sample-none").policy(run)
    assert (quick.teacher_fallback, quick.teacher_fallback_on, quick.teacher_sampling) == (True, LOOP_REASONS, "none")
    wider = Contender.parse("wider=whisper-tiny.en~loops+logprob+sample-loops").policy(run)
    assert (wider.teacher_fallback_on, wider.teacher_sampling) == ((*LOOP_REASONS, "logprob"), "loops")
    assert Contender.parse("own=whisper-tiny.en").overrides == {}
    greedy = Contender.parse("greedy=whisper-tiny.en@1/1~loops+beam-1").policy(run)
    assert (greedy.context, greedy.beam_size, greedy.teacher_fallback_on) == ("1/1", 1, LOOP_REASONS)
    with pytest.raises(ValueError, match="beam-N"):
        Contender.parse("wide=whisper-tiny.en~beam-0")
    listed = tmp_path / "contenders.yaml"
    listed.write_text("- {label: teacher, model: whisper-base}\n"
                      "- {label: quick, model: whisper-tiny.en, teacher_sampling: none, beam_size: 1}\n")
    teacher, yaml_quick = Contender.from_yaml(listed)
    assert (teacher.label, yaml_quick.policy(run).teacher_sampling, yaml_quick.policy(run).beam_size) == \
        ("teacher", "none", 1)
    listed.write_text("- {label: typo, model: whisper-base, beam_sise: 1}\n")
    with pytest.raises(ValueError, match="beam_sise"):
        Contender.from_yaml(listed)
    unpenalised = served_transcriber("whisper-tiny.en", EvaluateOptions(
        language="en", policy=DecodePolicy(repetition_penalty=1.0)), tmp_path)
    assert unpenalised.engine.repetition.value == 1.0 and unpenalised.served.teacher.engine.repetition.value == 1.0


@pytest.mark.slow
def test_compare_pairs_the_contenders_after_a_second_baseline_against_it_too(served_store, tmp_path):
    """One comparison states a student against both teachers (at 30 s and at its own short context): contenders
    after a ``baseline: true`` one are paired against it as well, and the interval agrees with the rows' MERs."""
    import json

    from k2d_train.experiments.compare import Contender, compare, markdown
    from k2d_train.stages.s9_evaluate import EvaluateOptions

    source = DATA / "manifest.jsonl"
    rows_in = [{**row.to_json(), "audio": str(row.path(source))} for row in read_manifest(source)]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows_in))
    listed = tmp_path / "contenders.yaml"
    listed.write_text("- {label: teacher, model: whisper-base}\n"
                      "- {label: teacher short, model: whisper-base, context: '1/1', baseline: true}\n"
                      "- {label: student, model: whisper-base, context: '1/1', beam_size: 1}\n")
    rows = compare(Contender.from_yaml(listed), {"all": tmp_path / "all.jsonl"}, EvaluateOptions(),
                   served_store.store, say=lambda _: None)
    by = {row["model"]: row for row in rows if row.get("set")}
    assert "vs" not in by["teacher"] and "vs" not in by["teacher short"] and "vs_baseline" in by["teacher short"]
    paired = by["student"]["vs"]["teacher short"]
    assert paired["utterances"] == len(rows_in) and paired["low"] <= paired["difference"] <= paired["high"]
    assert paired["difference"] == pytest.approx(by["student"]["mer"] - by["teacher short"]["mer"], abs=1e-3)
    assert paired["speedup_p50"] == pytest.approx(
        by["teacher short"]["latency_ms_p50"] / by["student"]["latency_ms_p50"], rel=0.02)
    assert "| all | student | teacher short |" in markdown(rows, "k2d compare")
