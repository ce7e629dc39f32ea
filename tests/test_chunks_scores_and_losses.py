"""K²D building blocks on known inputs: chunking, hallucination flag, δ rules, MER, layer choice, loss."""

from __future__ import annotations

import json

import pytest
import torch

from k2d.scoring import cer_zh_counts, mer, normalize, paired_bootstrap, repeated_ngram, units, wer_en_counts
from k2d_train.labels.chunking import Segment, merge_segments, timestamp
from k2d_train.stages.s3_validate import distances
from k2d_train.stages.s4_student import remap_alignment_heads, spaced_layers
from k2d_train.training.losses import LossWeights, distillation_loss, kl_divergence, topk_kl_divergence


def test_segments_merge_greedily_up_to_30_seconds():
    segments = [Segment(0, 10, "a"), Segment(10.5, 20, "b"), Segment(21, 29.9, "c"), Segment(30, 35, "d"),
                Segment(36, 70, "too long")]
    chunks, dropped = merge_segments(segments)
    assert [[s.text for s in c.segments] for c in chunks] == [["a", "b", "c"], ["d"]]
    assert dropped == 1  # a segment Whisper cannot see whole is left out, never clipped under its full text
    assert all(c.duration <= 30 for c in chunks)
    assert chunks[0].label() == "<|0.00|>a<|10.00|><|10.50|>b<|20.00|><|21.00|>c<|29.90|>"
    assert chunks[1].label() == "<|0.00|>d<|5.00|>"


def test_chunks_vary_in_length_and_get_margins_that_never_overlap():
    segments = [Segment(i * 3.0, i * 3.0 + 2.5, f"s{i}") for i in range(40)]
    chunks, _ = merge_segments(segments, 30.0, min_chunk_s=6.0, seed=1, edge_s=0.2, audio_s=120.0)
    lengths = {round(c.duration) for c in chunks}
    assert len(lengths) > 2 and all(c.duration <= 30 for c in chunks)
    assert chunks[0].start == 0.0 and chunks[1].start == chunks[1].segments[0].start - 0.2
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:], strict=False))
    assert [s.text for c in chunks for s in c.segments] == [s.text for s in segments]  # nothing lost


def test_timestamps_round_to_whisper_steps_and_clip():
    assert timestamp(1.234) == "<|1.24|>" and timestamp(-1) == "<|0.00|>" and timestamp(45) == "<|30.00|>"


def test_empty_and_backwards_segments_are_dropped():
    assert merge_segments([Segment(5, 5, "x"), Segment(6, 4, "y")]) == ([], 0)


def test_ngram_flag_catches_loops_only():
    assert repeated_ngram("這個 這個 這個 這個 這個 這個 這個 這個 這個")
    assert repeated_ngram("we need the loss we need the loss we need the loss", n=3, count=3)
    assert not repeated_ngram("我們今天要講的是 gradient descent 和 learning rate")
    assert not repeated_ngram("對 對 對", n=3, count=3)  # too short to be a loop


def test_mer_counts_characters_and_words_after_normalisation():
    assert normalize("我們用 Gradient-Descent，來訓練！") == "我 们 用 gradient descent 来 训 练"
    assert mer("我們用 gradient descent", "我们用 Gradient Descent.") == 0.0  # traditional vs simplified, case
    assert units("<|0.00|>好的 OK<|1.00|>") == ["好", "的", "ok"]
    assert mer("今天 gradient", "今天 gradients") == pytest.approx(1 / 3)
    assert cer_zh_counts("今天 gradient", "今夭 gradient").errors == 1
    assert wer_en_counts("今天 gradient descent", "今天 gradient").errors == 1


def test_each_distance_on_known_pairs():
    same = distances("他在訓練 model", "他在訓練 model")
    assert same == {"none": 0.0, "ngram": 0.0, "mer": 0.0, "per": 0.0, "comp": 0.0}
    homophone = distances("他在訓練 model", "她再訓練 model")
    assert homophone["mer"] == pytest.approx(2 / 5) and homophone["per"] == 0.0 and homophone["comp"] == 0.0
    different = distances("我們今天講 attention", "大家明天看 dropout")
    assert different["mer"] == pytest.approx(5 / 6)  # only 天 matches
    assert different["per"] > 0.5 and different["comp"] == different["per"]
    loop = "這個 loss 這個 loss 這個 loss 這個 loss 這個 loss"
    assert distances(loop, "這個 loss")["comp"] == 1.0  # a hallucinating teacher is always dropped
    assert distances("這個 loss 很重要", loop)["comp"] == 0.0  # a hallucinating validator never vetoes


@pytest.mark.parametrize(("total", "keep", "expected"), [(32, 2, [0, 31]), (6, 2, [0, 5]), (6, 3, [0, 2, 5]),
                                                         (4, 4, [0, 1, 2, 3]), (6, 1, [5])])
def test_decoder_layers_are_maximally_spaced(total, keep, expected):
    assert spaced_layers(total, keep) == expected


def test_layer_selection_rejects_impossible_counts():
    with pytest.raises(ValueError):
        spaced_layers(6, 7)


def test_alignment_heads_follow_the_kept_layers():
    base_heads = [[3, 1], [4, 2], [4, 3], [4, 7], [5, 1], [5, 2], [5, 4], [5, 6]]
    assert remap_alignment_heads(base_heads, [0, 5], 8) == [[1, 1], [1, 2], [1, 4], [1, 6]]
    assert remap_alignment_heads([[2, 0]], [0, 5], 4) == [[1, 0], [1, 1], [1, 2], [1, 3]]


def test_kl_is_zero_when_student_equals_teacher_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 50)
    labels = torch.randint(0, 50, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.bool)
    same = distillation_loss(logits, logits.clone(), labels, mask, LossWeights())
    assert same["kl"].abs() < 1e-6
    assert same["loss"] == pytest.approx(0.8 * same["ce"].item(), rel=1e-5)
    other = distillation_loss(logits, torch.randn(2, 5, 50), labels, mask, LossWeights())
    assert other["kl"] > 0.01


def test_masked_positions_do_not_change_the_loss():
    torch.manual_seed(1)
    student, teacher = torch.randn(1, 4, 30), torch.randn(1, 4, 30)
    labels = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[False, True, True, False]])
    base = distillation_loss(student, teacher, labels, mask, LossWeights())["loss"]
    student[0, 0] += 100
    student[0, 3] -= 100
    assert distillation_loss(student, teacher, labels, mask, LossWeights())["loss"] == pytest.approx(base.item())


def test_temperature_softens_kl():
    torch.manual_seed(2)
    s, t = torch.randn(8, 30) * 5, torch.randn(8, 30) * 5
    assert kl_divergence(s, t, 4.0) < kl_divergence(s, t, 1.0)


def _topk(teacher: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.log_softmax(teacher / temperature, dim=-1).topk(k, dim=-1)


def test_topk_kl_is_a_lower_bound_that_reaches_the_full_kl_as_k_covers_the_vocabulary():
    torch.manual_seed(3)
    student, teacher = torch.randn(6, 40) * 3, torch.randn(6, 40) * 3
    full = kl_divergence(student, teacher, 2.0)
    bounds = [topk_kl_divergence(student, *_topk(teacher, k, 2.0), 2.0) for k in (1, 8, 20, 40)]
    assert all(0 <= b <= full + 1e-5 for b in bounds)
    assert bounds[-1] == pytest.approx(full.item(), rel=1e-4)
    assert topk_kl_divergence(teacher, *_topk(teacher, 8, 2.0), 2.0).abs() < 1e-5  # student = teacher: nothing left


def test_the_loss_takes_cached_topk_rows_in_mask_order():
    torch.manual_seed(4)
    student, teacher = torch.randn(2, 3, 30), torch.randn(2, 3, 30)
    labels, mask = torch.randint(0, 30, (2, 3)), torch.tensor([[False, True, True], [True, True, False]])
    live = distillation_loss(student, teacher, labels, mask, LossWeights())
    cached = distillation_loss(student, None, labels, mask, LossWeights(), _topk(teacher[mask], 30, 2.0))
    assert cached["kl"] == pytest.approx(live["kl"].item(), rel=1e-4)
    assert cached["loss"] == pytest.approx(live["loss"].item(), rel=1e-4)


def test_paired_bootstrap_calls_a_difference_only_when_its_interval_excludes_zero():
    references = ["我们今天讲梯度下降"] * 30
    same = paired_bootstrap(references, references, references)
    assert (same.difference, same.low, same.high, same.verdict) == (0.0, 0.0, 0.0, "tie")
    wrong_everywhere = ["我们明天讲梯度上升"] * 30
    worse = paired_bootstrap(references, references, wrong_everywhere)
    assert worse.verdict == "worse" and worse.low > 0 and worse.difference == pytest.approx(3 / 9, abs=1e-4)
    assert paired_bootstrap(references, wrong_everywhere, references).verdict == "better"
    one_slip = references[:-1] + ["我们今天讲梯度下"]  # one character on one utterance of thirty
    assert paired_bootstrap(references, references, one_slip).verdict == "tie"


def test_the_cache_records_how_much_of_the_teachers_mass_its_top_k_leaves_out(tmp_path):
    from k2d_train.training.teacher_targets import TopK, TopKCache, rest_mass

    flat = torch.zeros(3, 100)  # a uniform teacher: its top 10 hold a tenth of the mass
    peaked = torch.full((2, 100), -20.0).index_fill(1, torch.tensor([7]), 20.0)  # one token holds it all
    targets = [TopK(*torch.log_softmax(t, -1).topk(10, -1)) for t in (flat, peaked)]
    assert rest_mass(targets[:1]) == pytest.approx(0.9, abs=1e-3) and rest_mass(targets[1:]) < 1e-4
    cache = TopKCache(tmp_path / "topk.npz", "f")
    cache.save(targets)
    assert json.loads((tmp_path / "topk.json").read_text())["rest_mass_mean"] == pytest.approx(0.9 * 3 / 5, abs=1e-3)
    assert [t.indices.tolist() for t in cache.load()] == [t.indices.tolist() for t in targets]


def test_state_masks_zero_spans_of_a_copy_alike_for_a_seed_and_anew_for_the_next():
    from k2d_train.training.augment import mask_states

    states = torch.randn(3, 200, 64) + 5  # no true zeros
    one = mask_states(states, torch.Generator().manual_seed(1), 2, 2)
    assert torch.equal(one, mask_states(states, torch.Generator().manual_seed(1), 2, 2))
    assert not torch.equal(one, mask_states(states, torch.Generator().manual_seed(2), 2, 2))
    assert (states != 0).all() and one.shape == states.shape  # the cached states are not touched
    zero = one == 0
    assert zero.any() and torch.equal(one[~zero], states[~zero])
    assert zero.all(-1).any(-1).all() or zero.all(1).any(-1).all()  # whole frames or whole channels per example
    assert torch.equal(mask_states(states, torch.Generator().manual_seed(1), 0, 0), states)


def test_a_distillation_step_masks_the_students_states_and_never_its_targets():
    from k2d_train.pipeline.options import DistillOptions
    from k2d_train.stages.s6_distill import augmented

    batch = {"student_encoder": torch.randn(2, 100, 32) + 5, "teacher_encoder": torch.randn(2, 100, 32) + 5,
             "topk_logprobs": torch.randn(7, 4), "inputs": torch.ones(2, 5, dtype=torch.long)}
    plain = augmented(batch, DistillOptions(), torch.Generator().manual_seed(0))
    assert plain is batch  # off by default: nothing drawn, nothing copied
    masked = augmented(batch, DistillOptions(mask_time=2, mask_channels=1), torch.Generator().manual_seed(0))
    assert (masked["student_encoder"] == 0).any() and (batch["student_encoder"] != 0).all()
    assert all(masked[name] is batch[name] for name in ("teacher_encoder", "topk_logprobs", "inputs"))


def test_native_bf16_is_read_from_the_cpus_flags(tmp_path):
    from k2d_train.training.loop import cpu_has_native_bf16

    zen4, older = tmp_path / "zen4", tmp_path / "older"
    zen4.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    older.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert cpu_has_native_bf16(zen4) is True and cpu_has_native_bf16(older) is False
    assert cpu_has_native_bf16(tmp_path / "missing") is None
