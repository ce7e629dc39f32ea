"""Faithful labels, per-segment validation runs, and Hugging Face datasets as pseudo-label input."""

from __future__ import annotations

import json

import pytest

from k2d.manifest import read_manifest
from k2d_train.labels.tokens import chunk_label_ids
from k2d_train.stages.s3_validate import kept_chunks, summary
from tests.conftest import MANIFEST


@pytest.fixture(scope="module")
def tokenizer(registry):
    from transformers import WhisperTokenizer

    return WhisperTokenizer.from_pretrained(registry.path_of("whisper-base-hf"))


def test_labels_keep_the_teachers_ids_and_convert_the_script_once(tokenizer):
    teacher_ids = tokenizer.encode(" 我們用 gradient descent", add_special_tokens=False)
    row = {"start": 10.0, "teacher_label": "unused", "segments": [
        {"start": 10.2, "end": 12.0, "text": " 我們用 gradient descent", "tokens": teacher_ids},
        {"start": 12.5, "end": 13.0, "text": " ok", "tokens": [999]},  # ids a re-tokenisation would not give
    ]}
    zero = tokenizer.convert_tokens_to_ids("<|0.00|>")
    as_is = chunk_label_ids(row, tokenizer, "as_is")
    assert as_is == [zero + 10, *teacher_ids, zero + 100, zero + 125, 999, zero + 150]
    simplified = chunk_label_ids(row, tokenizer, "simplified")
    assert tokenizer.decode(simplified[1:-3]).strip() == "我们用 gradient descent"  # converted, so re-encoded
    assert simplified[-2] == 999  # unchanged segment: the teacher's own ids
    assert tokenizer.decode(chunk_label_ids(row, tokenizer, "traditional")[1:-3]).strip() == "我們用 gradient descent"


def seg(start: float, keep: bool) -> dict:
    """A validated 2 s segment that rule ``comp`` keeps or drops (rule ``none`` keeps everything)."""
    return {"start": start, "end": start + 2, "text": f"s{start}", "tokens": [],
            "delta": {"none": 0.0, "comp": 0.0 if keep else 1.0}}


def chunk_row(*segments: dict) -> dict:
    return {"audio": "a.flac", "id": "c", "start": 0.0, "end": 20.0, "language": "zh", "teacher_text": "x",
            "segments": list(segments)}


def test_dropped_segments_split_a_chunk_into_runs_of_kept_ones():
    row = chunk_row(seg(0, True), seg(3, True), seg(6, False), seg(9, True), seg(12, False), seg(15, False))
    runs = kept_chunks([row], "comp", 0.4)
    assert [r["id"] for r in runs] == ["c-r0", "c-r1"]
    assert [[s["text"] for s in r["segments"]] for r in runs] == [["s0", "s3"], ["s9"]]
    assert runs[1]["start"] == 8.8 and runs[1]["end"] == 11.2 and runs[1]["teacher_label"] == "<|0.20|>s9<|2.20|>"
    assert kept_chunks([{**row, "segments": [seg(0, True)]}], "comp", 0.4)[0]["id"] == "c"  # whole chunk kept


def test_validation_reports_speech_hours_and_the_chunk_hours_training_reads():
    """Kept speech and kept chunk audio are different hours: a chunk spans its segments' pauses and margins."""
    stats = summary([chunk_row(seg(0, True), seg(3, True), seg(6, False), seg(9, True))], 0.4)
    assert stats["comp"]["chunks"] == 2 and stats["comp"]["speech_hours"] * 3600 == pytest.approx(6.0)
    assert stats["comp"]["chunk_hours"] * 3600 == pytest.approx(5.2 + 2.4)  # 0-5.2 (pause, margin) and 8.8-11.2
    assert stats["none"]["chunk_hours"] * 3600 == pytest.approx(11.2)  # one whole chunk: 0 to the last end + margin
    assert stats["comp"]["percent"] == pytest.approx(75.0)


def test_a_saved_hugging_face_dataset_is_pseudo_labelled(registry, tmp_path):
    from datasets import Audio, Dataset

    from k2d_train.stages.s2_pseudo_label import PseudoLabelOptions, pseudo_label

    clips = [str(MANIFEST.parent / r.audio) for r in read_manifest(MANIFEST) if r.text][:2]
    Dataset.from_dict({"audio": clips}).cast_column("audio", Audio()).save_to_disk(str(tmp_path / "ds"))
    options = PseudoLabelOptions(beam_size=1)
    result = pseudo_label("whisper-base", tmp_path / "ds", tmp_path / "out", options, registry.store)
    assert result["files"] == 2 and result["chunks"] >= 2
    rows = [json.loads(line) for line in (tmp_path / "out" / "chunks.jsonl").read_text().splitlines()]
    assert all((tmp_path / "out" / r["audio"]).exists() and r["segments"][0]["tokens"] for r in rows)
    again = pseudo_label("whisper-base", tmp_path / "ds", tmp_path / "out", options, registry.store)
    assert again["labelled_now"] == 0 and again["chunks"] == result["chunks"]  # resumed: nothing redone
