"""Encoder distillation for short context on the real base teacher: the short-context forward is
exactly what CTranslate2 serves, training moves only the encoder, resumes, and exports its policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from k2d.audio import decode_audio
from k2d.context import POLICY_FILE, ContextPolicy
from k2d.features import log_mel
from k2d_train.stages.s4_student import build_student
from k2d_train.stages.s5_distill_encoder import EncoderDistillOptions, distill_encoder
from k2d_train.training.encoder import encode
from tests.conftest import MANIFEST


def test_short_forward_matches_transformers_at_30_s_and_ctranslate2_when_short(registry):
    """The training-side forward equals transformers' on 30 s and CTranslate2's on 8 s of frames."""
    import ctranslate2
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(registry.path_of("whisper-base-hf")).eval()
    audio = decode_audio(MANIFEST.parent / "mixed_gradient.flac")
    with torch.no_grad():
        full = torch.from_numpy(log_mel(audio))[None]
        torch.testing.assert_close(encode(model.model.encoder, full)[0], model.model.encoder(full).last_hidden_state)
        short = torch.from_numpy(log_mel(audio, 800))[None]
        ours = encode(model.model.encoder, short)[0][0].numpy()
    served = ctranslate2.models.Whisper(str(registry.path_of("whisper-base")), compute_type="float32")
    theirs = np.array(served.encode(ctranslate2.StorageView.from_array(short.numpy()), to_cpu=True))[0]
    assert ours.shape == theirs.shape == (400, 512)
    assert np.abs(ours - theirs).max() < 0.05 and np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.9999


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    rows = []
    for row in (json.loads(line) for line in MANIFEST.read_text().splitlines()):
        if row["text"]:
            seconds = round(len(decode_audio(MANIFEST.parent / row["audio"])) / 16000, 2)
            rows.append({"audio": str(MANIFEST.parent / row["audio"]), "id": row["audio"], "start": 0.0, "end": seconds})
    (root / "kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.slow
def test_encoder_distillation_trains_the_encoder_only_resumes_and_records_its_policy(registry, kept):
    teacher = registry.path_of("whisper-base-hf")
    build_student(teacher, kept / "init", 2, encoder_layers=4)
    options = EncoderDistillOptions(max_steps=2, batch_size=2, save_every=1, target_layers=[2],
                                    extra_teachers=[str(registry.path_of("whisper-tiny.en-hf"))])
    first = distill_encoder(teacher, kept / "init", kept / "kept.jsonl", kept / "run", options, kept / "out",
                            registry.store)
    assert first["steps"] == 2 and first["last"]["loss"] > 0
    start, trained = load_file(kept / "init" / "model.safetensors"), load_file(kept / "out" / "model.safetensors")
    moved = [n for n in trained if n.startswith("model.encoder") and not torch.equal(trained[n], start[n])]
    still = [n for n in trained if n.startswith("model.decoder") and not torch.equal(trained[n], start[n])]
    assert moved and not still
    assert ContextPolicy.of_model(kept / "out") == ContextPolicy(2.0, 2.0)
    assert json.loads((kept / "out" / "config.json").read_text())["encoder_layers"] == 4
    more = distill_encoder(teacher, kept / "init", kept / "kept.jsonl", kept / "run",
                           EncoderDistillOptions(**{**options.__dict__, "max_steps": 3}), kept / "out", registry.store)
    assert more["steps"] == 3 and len((kept / "run" / "train_log.jsonl").read_text().splitlines()) == 3  # resumed


@pytest.mark.slow
def test_the_exported_student_carries_its_context_into_serving(registry, kept, tmp_path):
    from k2d.engine import WhisperEngine
    from k2d_train.store.convert import transformers_to_ct2

    (kept / "init" / POLICY_FILE).write_text(json.dumps({"pad_s": 2.0, "bucket_s": 2.0}))
    transformers_to_ct2(kept / "init", tmp_path / "ct2", "int8")
    engine = WhisperEngine(tmp_path / "ct2", "cpu", [0], "int8")
    audio = decode_audio(MANIFEST.parent / "zh_lecture.flac")
    assert engine.policy == ContextPolicy(2.0, 2.0) and engine.frames(audio) < 3000


def _schedule(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["lr"]) for r in map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_a_paused_encoder_stage_writes_no_student_and_resumes_on_the_straight_runs_schedule(registry, kept, tmp_path):
    """``stop_after_steps`` (the one training loop's pause): a checkpoint, no half-trained student, and the
    resumed run takes the steps and learning rates of an uninterrupted one."""
    from dataclasses import replace

    teacher = registry.path_of("whisper-base-hf")
    build_student(teacher, tmp_path / "init", 2)
    options = EncoderDistillOptions(max_steps=3, batch_size=2, warmup_steps=1, save_every=5)
    args = (teacher, tmp_path / "init", kept / "kept.jsonl")
    straight = distill_encoder(*args, tmp_path / "straight", options, tmp_path / "out-a", registry.store,
                               teacher_cache=tmp_path / "targets")
    paused = distill_encoder(*args, tmp_path / "paused", replace(options, stop_after_steps=2), tmp_path / "out-b",
                             registry.store, teacher_cache=tmp_path / "targets")
    assert paused["steps"] == 2 and not (tmp_path / "out-b").exists()
    resumed = distill_encoder(*args, tmp_path / "paused", options, tmp_path / "out-b", registry.store,
                              teacher_cache=tmp_path / "targets")
    assert straight["steps"] == resumed["steps"] == 3 and (tmp_path / "out-b" / "model.safetensors").exists()
    assert _schedule(tmp_path / "paused") == _schedule(tmp_path / "straight") and _schedule(tmp_path / "paused")[-1][1] == 0
