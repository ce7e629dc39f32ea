"""What each training stage learns from must be what the student is given: encoder targets of the audio it
hears, caches that never mix spans or encoders, N-best labels only where they describe the kept audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from k2d.audio import decode_audio
from k2d.context import FULL_FRAMES
from k2d.features import log_mel
from k2d_train.stages.s3_validate import distances, kept_chunks
from k2d_train.stages.s5_distill_encoder import heard_chunks
from k2d_train.stages.s6_distill import Item, build_examples, collate, same_encoder
from k2d_train.training.encoder_states import CT2Encoder, EncoderStates, cache_name
from k2d_train.training.losses import frame_contrastive, layer_regression
from tests.conftest import DATA

CLIP = DATA / "mixed_batch.mp3"  # 6.8 s of real code-switched speech


def _kept(tmp_path, rows: list[dict]):
    path = tmp_path / "kept.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_encoder_targets_describe_exactly_the_audio_the_student_hears(registry, tmp_path):
    """A chunk longer than the crop: the student hears its first 2 s, so its targets are the teacher's states
    of those 2 s (then the teacher's view of padding), not of the speech that follows."""
    kept = _kept(tmp_path, [{"audio": str(CLIP), "id": "c", "start": 0.5, "end": 6.5}])
    (chunk,) = heard_chunks(kept, max_crop_s=2.0)
    assert (chunk.start, chunk.end) == (0.5, 2.5)
    teacher = CT2Encoder(registry.path_of("whisper-base"))
    states = EncoderStates(teacher, tmp_path / "cache", torch.device("cpu"), lambda _: FULL_FRAMES, identity="t")
    target = states.get(chunk.audio, chunk.start, chunk.end, chunk.key)["final"]
    audio = decode_audio(CLIP)
    heard = audio[8000:40000]
    expected = teacher(torch.from_numpy(log_mel(heard, FULL_FRAMES))[None])[0]
    torch.testing.assert_close(target, expected.half().float())
    whole = teacher(torch.from_numpy(log_mel(audio[8000:104000], FULL_FRAMES))[None])[0]
    after = slice(110, 150)  # 2.2-3.0 s into the chunk: speech in the whole chunk, padding for the student
    assert (target[after] - whole[after]).abs().mean() > 1.5 * (target[:90] - whole[:90]).abs().mean()
    assert heard_chunks(kept, max_crop_s=None)[0].end == 6.5


def test_cached_states_are_those_of_the_span_asked_for(registry, tmp_path):
    """``c-r0`` names different spans under different rules: the cache answers by span, source and encoder."""
    teacher = CT2Encoder(registry.path_of("whisper-base"))
    states = EncoderStates(teacher, tmp_path / "cache", torch.device("cpu"), lambda _: FULL_FRAMES, identity="t")
    first = states.get(CLIP, 0.0, 2.0, "c-r0")["final"]
    other = states.get(CLIP, 3.0, 5.0, "c-r0")["final"]
    assert (first - other).abs().mean() > 0.05
    again = EncoderStates(teacher, tmp_path / "cache", torch.device("cpu"), lambda _: FULL_FRAMES, identity="t")
    torch.testing.assert_close(again.get(CLIP, 3.0, 5.0, "c-r0")["final"], other)  # read back, not recomputed
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    names = {cache_name("c-r0", CLIP, 0.0, 2.0, "t"), cache_name("c-r0", CLIP, 0.0, 2.0, "student"),
             cache_name("c-r0", DATA / "zh_lecture.flac", 0.0, 2.0, "t"), cache_name("c-r0", CLIP, 0.0, 2.5, "t")}
    assert len(names) == 4 and all(n.startswith("c-r0-") for n in names)


def _segment(start: float, end: float, text: str, loops: bool = False) -> dict:
    return {"start": start, "end": end, "text": text, "tokens": [], "delta": {"ngram": float(loops), "none": 0.0}}


def test_nbest_labels_go_only_with_a_chunk_kept_whole_and_never_loop():
    whole = {"audio": "a.flac", "id": "w", "start": 0.0, "end": 6.0, "language": "zh",
             "segments": [_segment(0.1, 2.9, "我們用"), _segment(3.0, 5.9, "來訓練")],
             "nbest": ["<|0.00|>我們用來訓練<|5.90|>", "<|0.00|>我們用用用用用用用用用用<|5.90|>"]}
    cut = {"audio": "a.flac", "id": "c", "start": 6.0, "end": 15.0, "language": "zh",
           "segments": [_segment(6.1, 8.9, "好"), _segment(9.0, 11.9, "復復復復復復", loops=True),
                        _segment(12.0, 14.9, "對")],
           "nbest": ["<|0.00|>好復復復復復復復復對<|8.90|>"]}
    rows = kept_chunks([whole, cut], "ngram", 0.4)
    assert [r["id"] for r in rows] == ["w", "c-r0", "c-r1"]
    assert rows[0]["nbest"] == ["<|0.00|>我們用來訓練<|5.90|>"]  # the looping hypothesis is dropped
    assert "nbest" not in rows[1] and "nbest" not in rows[2]  # sub-runs: the hypotheses span audio they lack


def test_examples_put_every_nbest_hypothesis_in_the_label_script_and_keep_distinct_ones(registry, tmp_path):
    from transformers import WhisperTokenizer

    tokenizer = WhisperTokenizer.from_pretrained(registry.path_of("whisper-base-hf"))
    row = {"audio": str(CLIP), "id": "w", "start": 0.0, "end": 4.0, "language": "zh",
           "segments": [{"start": 0.0, "end": 3.5, "text": "我们用来训练", "tokens": []}],
           "nbest": ["<|0.00|>我們用來訓練<|3.50|>", "<|0.00|>我們用來訓練<|3.50|>", "<|0.00|>我们用来训练模型<|3.50|>"]}
    examples = build_examples(_kept(tmp_path, [row]), tokenizer, use_nbest=True, script="simplified")
    texts = [tokenizer.decode(e.tokens[e.prompt_len:], skip_special_tokens=True) for e in examples]
    assert texts == ["我们用来训练", "我们用来训练模型"]  # the first hypothesis converted equals the label: once
    assert not any(ch in "".join(texts) for ch in "們來訓練")
    assert len(build_examples(_kept(tmp_path, [row]), tokenizer, use_nbest=False)) == 1


def test_collate_predicts_each_label_token_from_the_one_before_and_masks_the_rest():
    states = torch.zeros(3, 4)
    batch = collate([Item(states, states, [50258, 50260, 50359, 7, 8, 50257], 3),
                     Item(states, states, [50258, 50260, 50359, 9, 50257], 3)], pad=50257)
    assert batch["inputs"].tolist()[0] == [50258, 50260, 50359, 7, 8]
    assert batch["labels"].tolist()[0] == [50260, 50359, 7, 8, 50257]
    assert batch["labels"][batch["mask"]].tolist() == [7, 8, 50257, 9, 50257]  # label tokens and EOT, no prompt


def test_layer_regression_vanishes_only_for_equal_states():
    gold = torch.randn(2, 10, 8)
    same, near, far = (layer_regression(x, gold) for x in (gold, gold + 0.01 * torch.randn_like(gold), -gold))
    assert same["l1"] == 0 and near["l1"] < far["l1"] and same["cos"] < near["cos"] < far["cos"]
    torch.testing.assert_close(layer_regression(gold + 0.5, gold)["l1"], torch.tensor(0.5))


def test_frame_contrastive_rewards_telling_frames_apart_and_ignores_masked_padding():
    generator = torch.Generator().manual_seed(0)
    gold = torch.randn(1, 40, 16, generator=generator)
    shuffled = gold[:, torch.randperm(40, generator=generator)]
    assert frame_contrastive(gold, gold) < 0.1 < frame_contrastive(shuffled, gold)
    padded_pred = torch.cat([gold, torch.zeros(1, 20, 16)], dim=1)
    padded_gold = torch.cat([gold, torch.randn(1, 20, 16, generator=generator)], dim=1)
    mask = torch.arange(60)[None] < 40
    torch.testing.assert_close(frame_contrastive(padded_pred, padded_gold, mask=mask), frame_contrastive(gold, gold))
    assert frame_contrastive(padded_pred, padded_gold) > 1.0


def test_an_english_only_validator_votes_on_english_words_alone():
    teacher = "我們用 gradient descent 來訓練"
    agree = distances(teacher, "We use gradient descent to train it", english_only=True)
    assert agree["mer"] == 0 and agree["per"] == 0 and agree["comp"] == 0
    half = distances(teacher, "We use gradient to train", english_only=True)
    assert half["mer"] == 0.5 and 0 < half["per"] < 1
    mandarin = distances("我們今天上課", "what he said today", english_only=True)
    assert mandarin["mer"] == mandarin["per"] == 0  # no English: no vote
    assert distances("好好好好好好好好好好", "hello", english_only=True)["comp"] == 1.0  # comp still drops the loop
    assert distances(teacher, "We use gradient descent to train it")["mer"] > 0.5  # a multilingual one: every unit


def test_the_student_reads_the_teacher_states_only_while_it_has_the_teachers_encoder(registry, tmp_path):
    from transformers import WhisperForConditionalGeneration

    from k2d_train.stages.s4_student import build_student

    build_student(registry.path_of("whisper-base-hf"), tmp_path / "student", 2)
    teacher = WhisperForConditionalGeneration.from_pretrained(registry.path_of("whisper-base-hf"))
    student = WhisperForConditionalGeneration.from_pretrained(tmp_path / "student")
    assert same_encoder(student, teacher)
    with torch.no_grad():
        student.model.encoder.layers[3].fc1.weight[0, 0] += 1e-3  # a distilled encoder, even a slightly moved one
    assert not same_encoder(student, teacher)


@pytest.mark.parametrize(("nbest", "use_nbest", "message"), [(1, True, "needs pseudo_label.nbest"),
                                                              (3, False, "no stage reads")])
def test_contradictory_nbest_options_are_refused(tmp_path, nbest, use_nbest, message):
    from k2d_train.pipeline.config import RunConfig

    config = tmp_path / "c.yaml"
    config.write_text(f"pseudo_label: {{nbest: {nbest}}}\ndistill: {{use_nbest: {str(use_nbest).lower()}}}\n")
    with pytest.raises(ValueError, match=message):
        RunConfig.load(config)


def test_a_validator_that_is_the_teacher_is_said_out_loud(tmp_path):
    from k2d_train.pipeline.config import RunConfig

    config = tmp_path / "c.yaml"
    config.write_text("teacher: whisper-base\nvalidator: whisper-base\nvalidate: {rule: comp}\n")
    assert "agreement with itself" in RunConfig.load(config).warnings()[0]
    config.write_text("teacher: whisper-base\nvalidator: whisper-tiny.en\nvalidate: {rule: comp}\n")
    assert RunConfig.load(config).warnings() == []


def test_english_words_from_the_validator_need_their_order():
    from k2d.scoring import unmatched_share

    assert unmatched_share(["a", "b", "c"], ["x", "a", "y", "b", "c", "z"]) == 0
    assert unmatched_share(["a", "b", "c"], ["c", "b", "a"]) == pytest.approx(2 / 3)
    assert unmatched_share([], ["a"]) == 0 and unmatched_share(["a"], []) == 1
    assert np.isclose(unmatched_share(list("abcd"), list("abd")), 0.25)
