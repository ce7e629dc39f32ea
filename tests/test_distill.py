"""Distillation on the real base teacher: features match serving, and resume is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from k2d.audio import decode_audio
from k2d.features import log_mel
from k2d_train.checkpoints import CheckpointStore
from k2d_train.stages.s3_student import build_student
from k2d_train.stages.s5_distill import DistillOptions, distill
from tests.conftest import MANIFEST


def test_training_features_are_the_features_faster_whisper_serves(registry):
    """Training uses faster-whisper's path; transformers' waveform padding gives other features."""
    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim
    from transformers import WhisperFeatureExtractor

    audio = decode_audio(MANIFEST.parent / "zh_lecture.flac")
    served = WhisperModel(str(registry.path_of("whisper-base")), device="cpu", compute_type="int8")
    np.testing.assert_array_equal(log_mel(audio), pad_or_trim(served.feature_extractor(audio)))
    hf = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000, return_tensors="np").input_features[0]
    assert np.abs(hf - log_mel(audio)).max() > 0.1  # the mismatch ASSETS.md warns about is real


@pytest.fixture(scope="module")
def tiny_setup(registry, tmp_path_factory):
    """A student of whisper-base and a kept manifest of the real test clips (labels = references)."""
    root = tmp_path_factory.mktemp("distill")
    build_student(registry.path_of("whisper-base-hf"), root / "student", 2)
    rows = []
    for line in MANIFEST.read_text().splitlines():
        row = json.loads(line)
        if row["text"]:
            seconds = round(len(decode_audio(MANIFEST.parent / row["audio"])) / 16000, 2)
            rows.append({"audio": str(MANIFEST.parent / row["audio"]), "id": row["audio"], "start": 0.0,
                         "end": seconds, "language": row["language"],
                         "teacher_label": f"<|0.00|>{row['text']}<|{min(seconds, 30):.2f}|>"})
    kept = root / "kept.jsonl"
    kept.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return root, kept


def _options(**extra) -> DistillOptions:
    return DistillOptions(max_steps=4, batch_size=2, save_every=2, eval_every=0, warmup_steps=1,
                          learning_rate=1e-4, **extra)


@pytest.mark.slow
def test_resume_after_an_interruption_continues_exactly(registry, tiny_setup):
    root, kept = tiny_setup
    teacher = registry.path_of("whisper-base-hf")
    straight = distill(teacher, root / "student", kept, root / "straight", _options(), final_dir=root / "final-a")
    first = distill(teacher, root / "student", kept, root / "resumed", _options(stop_after_steps=2))
    assert first["steps"] == 2 and not (root / "final-b").exists()
    assert CheckpointStore(root / "resumed" / "checkpoints").latest().name == "step-000002"
    second = distill(teacher, root / "student", kept, root / "resumed", _options(), resume=True, final_dir=root / "final-b")
    assert second["steps"] == straight["steps"] == 4
    a, b = load_file(root / "final-a" / "model.safetensors"), load_file(root / "final-b" / "model.safetensors")
    start = load_file(root / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:  # equal up to float rounding (restored optimizer step counters): updates are ~1e-4
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-7, msg=name)
    moved = [n for n in a if "decoder.layers" in n and not torch.equal(a[n], start[n])]
    frozen = [n for n in a if n.startswith("model.encoder") and not torch.equal(a[n], start[n])]
    assert moved and not frozen  # the decoder learned, the encoder stayed frozen
    straight_log = (root / "straight" / "train_log.jsonl").read_text().splitlines()
    assert straight_log == (root / "resumed" / "train_log.jsonl").read_text().splitlines()  # same losses, same lr


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "step-000004").mkdir(parents=True)
    (folder / "step-000004" / "k2d_state.json").write_text(json.dumps({"step": 4}))
    (folder / "latest").write_text("step-000004")
    (folder / "step-000006.partial").mkdir()  # a save that crashed half-way
    assert CheckpointStore(folder).latest().name == "step-000004"
