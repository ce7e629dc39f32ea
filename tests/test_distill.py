"""Distillation on the real base teacher: features match serving, and resume is exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from k2d.audio import decode_audio
from k2d.features import log_mel
from k2d_train.stages.s4_student import build_student
from k2d_train.stages.s6_distill import DevScore, DistillOptions, distill
from k2d_train.training.checkpoints import CheckpointStore
from k2d_train.training.encoder_states import BucketBatches
from tests.conftest import MANIFEST, REPO, free_port


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
                         "end": seconds, "language": row["language"], "teacher_text": row["text"],
                         "teacher_label": f"<|0.00|>{row['text']}<|{min(seconds, 30):.2f}|>"})
    kept = root / "kept.jsonl"
    kept.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return root, kept


def _options(**extra) -> DistillOptions:
    return DistillOptions(**{"max_steps": 4, "batch_size": 2, "save_every": 2, "eval_every": 0, "warmup_steps": 1,
                             "learning_rate": 1e-4, **extra})


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


@pytest.mark.slow
def test_the_cheap_cpu_recipe_keeps_the_embedding_and_trains_the_layers_on_masked_states(registry, tiny_setup):
    """``freeze_embeddings`` + bf16 + dropout + state masks (scale.yaml's steps, regularised), after a float32 stage
    in the same process: the tied embedding comes back bit for bit, the layers move, and the masks change what the
    layers learn (against unmasked)."""
    from k2d_train.training.loop import make_accelerator

    root, kept = tiny_setup
    teacher = registry.path_of("whisper-base-hf")
    make_accelerator(DistillOptions())  # as stage 5 does before it in one `k2d run`: float32 in this process first
    cheap = dict(freeze_embeddings=True, mixed_precision="bf16", dropout=0.1)
    masked = distill(teacher, root / "student", kept, root / "cheap", _options(**cheap, mask_time=2, mask_channels=2),
                     final_dir=root / "final-cheap")
    plain = distill(teacher, root / "student", kept, root / "cheap-plain", _options(**cheap),
                    final_dir=root / "final-cheap-plain")
    assert masked["steps"] == plain["steps"] == 4
    start = load_file(root / "student" / "model.safetensors")
    a, b = load_file(root / "final-cheap" / "model.safetensors"), load_file(root / "final-cheap-plain" / "model.safetensors")
    embedding = "model.decoder.embed_tokens.weight"
    assert torch.equal(a[embedding], start[embedding]) and torch.equal(b[embedding], start[embedding])
    layers = [n for n in a if "decoder.layers" in n]
    assert any(not torch.equal(a[n], start[n]) for n in layers)
    assert any(not torch.equal(a[n], b[n]) for n in layers)  # the masks reached the student's input


@pytest.mark.slow
def test_cached_teacher_topk_gives_the_live_teachers_loss_and_is_computed_once(registry, tiny_setup):
    """With every token kept, the cached targets are the live teacher's distribution: the first step's KL (before
    any update) is the same; a second run reuses the cache, and another temperature does not."""
    root, kept = tiny_setup
    teacher = registry.path_of("whisper-base-hf")
    one = {"max_steps": 1, "kl_states": "student"}
    live = distill(teacher, root / "student", kept, root / "live", _options(**one))
    cached = distill(teacher, root / "student", kept, root / "cached", _options(**one, teacher_topk=51865))
    assert cached["last"]["kl"] == pytest.approx(live["last"]["kl"], rel=2e-3)  # float16 storage of log-probs
    assert cached["last"]["ce"] == pytest.approx(live["last"]["ce"], rel=1e-5)
    small = root / "small"
    distill(teacher, root / "student", kept, small, _options(**one, teacher_topk=16))
    stamp = (small / "teacher_topk.npz").stat().st_mtime_ns
    distill(teacher, root / "student", kept, small, _options(**one, teacher_topk=16))
    assert (small / "teacher_topk.npz").stat().st_mtime_ns == stamp  # reused, not recomputed
    distill(teacher, root / "student", kept, small, _options(**one, teacher_topk=16, temperature=1.0))
    assert (small / "teacher_topk.npz").stat().st_mtime_ns != stamp  # other targets, other cache


def _short_context_student(teacher, out, layers: int, nudge_encoder: bool = False):
    """A student served at audio + 1 s (so it has states of its own), optionally with one encoder weight moved."""
    from safetensors.torch import save_file

    from k2d.context import POLICY_FILE

    build_student(teacher, out, layers)
    (out / POLICY_FILE).write_text(json.dumps({"pad_s": 1.0, "bucket_s": 1.0}))
    if nudge_encoder:
        weights = load_file(out / "model.safetensors")
        weights["model.encoder.layer_norm.bias"] = weights["model.encoder.layer_norm.bias"] + 1e-3
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.slow
def test_students_on_one_encoder_share_its_states_and_the_teachers_targets(registry, tiny_setup, tmp_path):
    """A learning curve's depths and its CTC head sit on one frozen encoder: the first point encodes the chunks
    and caches the teacher's top-k on them, the others (another depth, the CTC head) compute neither again;
    a student whose encoder differs by one weight gets states of its own."""
    from k2d_train.stages.s7_distill_ctc import CTCOptions, distill_ctc

    _, kept = tiny_setup
    teacher, shared = registry.path_of("whisper-base-hf"), tmp_path / "shared"
    one = _options(max_steps=1, kl_states="student", teacher_topk=16)

    def made() -> dict[str, int]:
        return {str(p.relative_to(shared)): p.stat().st_mtime_ns for p in shared.rglob("*.np*")}

    distill(teacher, _short_context_student(teacher, tmp_path / "d2", 2), kept, tmp_path / "run-d2", one,
            shared=shared)
    first = made()
    states = [name for name in first if name.startswith("student_encoder_cache/")]
    assert states and len([name for name in first if name.startswith("teacher_topk-")]) == 1
    distill(teacher, _short_context_student(teacher, tmp_path / "d4", 4), kept, tmp_path / "run-d4", one,
            shared=shared)
    assert made() == first  # another depth: no state and no target computed again
    distill_ctc(tmp_path / "d2", kept, tmp_path / "run-ctc", CTCOptions(max_steps=1, batch_size=2, eval_every=0,
                                                                        warmup_steps=1), shared=shared)
    assert made() == first and not (tmp_path / "run-ctc" / "encoder_cache").exists()  # the CTC head reads them
    distill(teacher, _short_context_student(teacher, tmp_path / "moved", 2, nudge_encoder=True), kept,
            tmp_path / "run-moved", one, shared=shared)
    assert len([name for name in made() if name.startswith("student_encoder_cache/")]) == 2 * len(states)
    assert len([name for name in made() if name.startswith("teacher_topk-")]) == 2  # targets on other states


def test_the_kept_checkpoint_is_chosen_by_guarded_mer_and_loops_not_raw_mer():
    """One row running to its token budget inflates raw greedy MER (3.2 here, as on the fuller recipe);
    the server cuts that loop, so the step that loops once beats the one that loops on six rows."""
    one_verbose_loop = DevScore(mer=3.2, guarded=0.45, loops=1, rows=20)
    six_short_loops = DevScore(mer=1.5, guarded=0.50, loops=6, rows=20)
    assert one_verbose_loop.mer > six_short_loops.mer
    assert one_verbose_loop.selection(1.0) < six_short_loops.selection(1.0)
    assert one_verbose_loop.selection(0.0) == 0.45  # loop_weight 0: guarded MER alone


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "step-000004").mkdir(parents=True)
    (folder / "step-000004" / "k2d_state.json").write_text(json.dumps({"step": 4}))
    (folder / "latest").write_text("step-000004")
    (folder / "step-000006.partial").mkdir()  # a save that crashed half-way
    assert CheckpointStore(folder).latest().name == "step-000004"


def test_a_resumed_log_drops_rows_past_the_checkpoint_and_a_row_torn_by_the_kill(tmp_path):
    from k2d_train.training.checkpoints import _log_from

    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": n}) + "\n" for n in range(1, 7)) + '{"step": 7, "lo')
    _log_from(log, 4).close()
    assert [json.loads(row)["step"] for row in log.read_text().splitlines()] == [1, 2, 3, 4]


# Each driver: teacher, student, kept, run folder, published folder [, stop_after_steps (0: run to the end)].
DRIVER = """
import sys
from pathlib import Path
from k2d_train.stages.s6_distill import DistillOptions, distill
teacher, student, kept, out, final = map(Path, sys.argv[1:6])
distill(teacher, student, kept, out, DistillOptions(max_steps=4, batch_size=2, save_every=2, eval_every=0,
                                                   warmup_steps=1, learning_rate=1e-4,
                                                   stop_after_steps=int(sys.argv[6])), final_dir=final)
"""


CTC_DRIVER = """
import sys
from pathlib import Path
from k2d_train.stages.s7_distill_ctc import CTCOptions, distill_ctc
teacher, student, kept, out, final = map(Path, sys.argv[1:6])
distill_ctc(student, kept, out, CTCOptions(max_steps=4, batch_size=2, save_every=2, eval_every=0, warmup_steps=1,
                                           mask_time=0, mask_channels=0, stop_after_steps=int(sys.argv[6])),
            out_dir=final)
"""


ENCODER_DRIVER = """
import sys
from pathlib import Path
from k2d_train.stages.s5_distill_encoder import EncoderDistillOptions, distill_encoder
teacher, student, kept, out, final = map(Path, sys.argv[1:6])
distill_encoder(teacher, student, kept, out, EncoderDistillOptions(max_steps=4, batch_size=2, warmup_steps=1,
                                                                  save_every=10, stop_after_steps=int(sys.argv[6])),
                final, teacher_cache=out.parent / f"{out.name}-targets")
"""


def _one_and_two_processes(registry, tiny_setup, tmp_path, driver_text: str) -> dict[str, list[dict]]:
    """Run a stage's driver straight through in 1 process, and under `accelerate launch` with 2 CPU processes
    paused after step 2 (``stop_after_steps``: a checkpoint, nothing published) then resumed; their logs."""
    root, kept = tiny_setup
    driver = tmp_path / "driver.py"
    driver.write_text(driver_text)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env |= {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(REPO / "configs/accelerate/cpu-2proc.yaml"), "--main_process_port", str(free_port())]
    for name, launcher, stop in (("one", [sys.executable], 0), ("two", accelerate, 2), ("two", accelerate, 0)):
        final = tmp_path / f"{name}-final"
        args = [registry.path_of("whisper-base-hf"), root / "student", kept, tmp_path / name, final, stop]
        result = subprocess.run([*launcher, str(driver), *map(str, args)], capture_output=True, text=True, env=env,
                                cwd=REPO, timeout=900)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        assert final.is_dir() != bool(stop), f"{name}: published {'after a pause' if stop else 'nothing'}"
    return {name: [json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
            for name in ("one", "two")}


def _same_schedule(logs: dict[str, list[dict]]) -> None:
    """The paused-and-resumed 2-process run took the single process's steps and learning rates, to zero."""
    assert [row["step"] for row in logs["two"]] == [row["step"] for row in logs["one"]] == [1, 2, 3, 4]
    assert [row["lr"] for row in logs["two"]] == [row["lr"] for row in logs["one"]] and logs["two"][-1]["lr"] == 0


@pytest.mark.slow
def test_two_processes_paused_and_resumed_follow_the_single_process_schedule(registry, tiny_setup, tmp_path):
    """`accelerate launch` with 2 CPU processes, paused after step 2 and resumed: the steps and learning rates of one process (the
    schedule accounts for N), the log and the student written once, one encoder cache without collisions."""
    root, _ = tiny_setup
    logs = _one_and_two_processes(registry, tiny_setup, tmp_path, DRIVER)
    _same_schedule(logs)
    assert json.loads((tmp_path / "two" / "distill_report.json").read_text())["steps"] == 4
    caches = {name: sorted(p.name for p in (tmp_path / name / "encoder_cache").iterdir()) for name in ("one", "two")}
    assert caches["two"] == caches["one"] and not [n for n in caches["two"] if ".tmp" in n]
    trained, start = load_file(tmp_path / "two-final" / "model.safetensors"), load_file(root / "student" / "model.safetensors")
    assert any(not torch.equal(trained[n], start[n]) for n in trained if "decoder.layers" in n)


@pytest.mark.slow
def test_the_ctc_stage_under_two_processes_pauses_resumes_and_follows_one_process(registry, tiny_setup, tmp_path):
    """Stage 7 runs the one training loop too (issue 31: its batches had no process index and its schedule was
    not scaled, so under 2 processes the learning rate reached 0 half-way): same steps, same rates."""
    _same_schedule(_one_and_two_processes(registry, tiny_setup, tmp_path, CTC_DRIVER))


@pytest.mark.slow
def test_the_encoder_stage_under_two_processes_pauses_resumes_and_follows_one_process(registry, tiny_setup,
                                                                                       tmp_path):
    """Stage 5 on the one loop under 2 processes: paused and resumed, the single process's schedule; the
    teacher targets are computed once per run folder and the student published once."""
    _same_schedule(_one_and_two_processes(registry, tiny_setup, tmp_path, ENCODER_DRIVER))
    assert (tmp_path / "two-final" / "model.safetensors").exists()


def test_bucket_batches_shard_evenly_and_resume_where_they_stopped():
    """Every process takes as many batches of one (seed, epoch) order, each of a single length bucket; together
    they cover every batch (wrapped round); skipping resumes mid-epoch. Accelerate's own batch-sampler sharding
    merged batches of different buckets and reported more batches than it gave (a 2-process run spun forever)."""
    buckets = [100, 200, 300, 400, 500, 100, 100]
    one = BucketBatches(buckets, 2, seed=0)
    whole = list(one)
    assert len(whole) == len(one) == one.per_process() == 6 and sorted(i for b in whole for i in b) == list(range(7))
    shards = [BucketBatches(buckets, 2, seed=0, processes=2, index=i) for i in (0, 1)]
    taken = [list(shard) for shard in shards]
    assert [len(t) for t in taken] == [len(s) for s in shards] == [3, 3]
    assert [b for pair in zip(*taken, strict=True) for b in pair] == whole  # interleaved, they are the one order
    assert all(len({buckets[i] for i in batch}) == 1 for t in taken for batch in t)
    three = [list(BucketBatches(buckets, 2, seed=0, processes=4, index=i)) for i in range(4)]
    assert [len(t) for t in three] == [2, 2, 2, 2] and three[2][1] == whole[0]  # wrapped: 8 slots for 6 batches
    shards[1].use_epoch(0, skip=2)
    assert list(shards[1]) == taken[1][2:] and len(shards[1]) == 1
    shards[1].use_epoch(1)
    assert list(shards[1]) != taken[1]  # another epoch, another order
