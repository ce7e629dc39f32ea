"""Pseudo-labelling across processes: deterministic shards, markers, and the merge — 2 processes give 1's rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from k2d_train.pipeline.sharding import Processes, ShardMarkers, fingerprint, merge_order, wait_for_files
from tests.conftest import DATA, REPO, free_port

SPEECH = ("en_lecture.flac", "zh_lecture.flac", "mixed_gradient.flac", "mixed_batch.mp3", "mixed_loss.ogg")
THREADS = 1  # CTranslate2 threads of every process, one or two of them: the same bytes need the same thread count


def test_every_item_goes_to_exactly_one_process_by_position():
    items = [f"f{i}" for i in range(11)]
    shares = [Processes(index, 3).mine(items) for index in range(3)]
    assert [p for p, _ in shares[1]] == [1, 4, 7, 10]
    assert sorted(p for share in shares for p, _ in share) == list(range(11))
    assert Processes().mine(items) == list(enumerate(items)) and not Processes().distributed


def test_outside_a_launcher_there_is_one_process_and_no_torch_import():
    code = ("import sys; from k2d_train.pipeline.sharding import Processes; p = Processes.current(); p.barrier(); "
            "print(p.index, p.count, 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert result.stdout.split() == ["0", "1", "False"], result.stderr


SHARE_DRIVER = """
import os, sys
from pathlib import Path
from k2d_train.pipeline.sharding import Processes
log, done = Path(sys.argv[1]), Path(sys.argv[2])
processes = Processes.current()
def work(item):
    with log.open("a") as out:
        out.write(f"{item} {os.getpid()}\\n")
    (done / str(item)).touch()
processes.share(list(range(7)), work, "share")
missing = [i for i in range(7) if not (done / str(i)).exists()]  # after the barrier: everyone's work is there
(log.parent / f"missing-{os.getpid()}").write_text(repr(missing))
"""


def test_shared_work_is_done_once_in_all_by_both_processes_and_seen_by_each_after_the_barrier(tmp_path):
    """Stages 5-7 fill their encoder-state caches with ``Processes.share``: under `accelerate launch` with 2 CPU
    processes each item is computed exactly once, half by each process, and both find all of it afterwards."""
    driver, log, done = tmp_path / "driver.py", tmp_path / "work.log", tmp_path / "done"
    driver.write_text(SHARE_DRIVER)
    done.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env |= {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "configs/accelerate/cpu-2proc.yaml"), "--main_process_port", str(free_port())]
    result = subprocess.run([*launcher, str(driver), str(log), str(done)], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert [p.read_text() for p in tmp_path.glob("missing-*")] == ["[]", "[]"]
    rows = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(item) for item, _ in rows) == list(range(7))  # once each, none twice
    by_pid: dict[str, list[int]] = {}
    for item, pid in rows:
        by_pid.setdefault(pid, []).append(int(item))
    assert sorted(sorted(items) for items in by_pid.values()) == [[0, 2, 4, 6], [1, 3, 5]]


def test_markers_are_waited_for_in_process_order_and_stale_ones_are_removed(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "000-of-003.json").write_text("{}")  # a previous run's marker
    ShardMarkers(folder, Processes(0, 3)).reset()
    assert not list(folder.glob("*.json"))
    ids = [f"f{i}" for i in range(7)]
    for index in (2, 0, 1):
        process = Processes(index, 3)
        ShardMarkers(folder, process).write({"index": index, "fingerprint": fingerprint(ids),
                                             "items": [[p, i] for p, i in process.mine(ids)]})
    markers = ShardMarkers(folder, Processes(0, 3)).wait_all(poll_s=0.01, timeout_s=1)
    assert [m["index"] for m in markers] == [0, 1, 2]
    assert merge_order(markers, ids) == ids


def test_the_merge_refuses_shards_that_listed_another_corpus_or_miss_items():
    ids = ["a", "b", "c"]
    good = [{"index": 0, "fingerprint": fingerprint(ids), "items": [[0, "a"], [2, "c"]]},
            {"index": 1, "fingerprint": fingerprint(ids), "items": [[1, "b"]]}]
    assert merge_order(good, ids) == ids
    with pytest.raises(RuntimeError, match="different corpus"):
        merge_order([good[0], {**good[1], "fingerprint": fingerprint(["a", "x", "c"])}], ids)
    with pytest.raises(RuntimeError, match="cover 2"):
        merge_order(good[:1], ids)


def test_waiting_for_a_shard_can_time_out(tmp_path):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        wait_for_files([tmp_path / "never.json"], poll_s=0.01, timeout_s=0.05)
    assert time.monotonic() - started < 2


def test_a_dataset_is_materialised_once_by_the_main_process_and_listed_alike_everywhere(tmp_path):
    from datasets import Audio, Dataset

    from k2d_train.stages.s2_pseudo_label import PseudoLabelOptions, _listing, _sources

    clips = [str(DATA / name) for name in SPEECH[:3]]
    Dataset.from_dict({"audio": clips}).cast_column("audio", Audio()).save_to_disk(str(tmp_path / "ds"))
    out, options = tmp_path / "out", PseudoLabelOptions()
    (out / "shards").mkdir(parents=True)
    main = _listing(str(tmp_path / "ds"), out, options, Processes(0, 2))
    other = _listing(str(tmp_path / "ds"), out, options, Processes(1, 2))  # reads the main process's listing
    assert main == other == list(_sources(str(tmp_path / "ds"), out, options)) and len(main) == 3
    assert all(path.exists() and path.parent == out / "audio" for _, path in main)


def _corpus(folder: Path) -> list[Path]:
    """12 short files (2.5–6.8 s) cut from the test clips: whole clips, halves joined, and padded cuts."""
    from k2d.audio import SAMPLE_RATE, decode_audio, write_audio

    clips = [decode_audio(DATA / name) for name in SPEECH]
    pieces = list(clips)
    for a, b in zip(clips, clips[1:] + clips[:1], strict=True):
        pieces.append(np.concatenate([a[: 3 * SAMPLE_RATE], b[: 3 * SAMPLE_RATE]]))
    silence = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    pieces += [np.concatenate([silence, clips[1][: 4 * SAMPLE_RATE]]), np.concatenate([clips[2][SAMPLE_RATE:], silence])]
    paths = []
    for index, audio in enumerate(pieces):
        path = folder / ("sub" if index % 4 == 3 else "") / f"clip{index:02d}.flac"  # a sub-folder too: ids keep it
        path.parent.mkdir(parents=True, exist_ok=True)
        paths.append(write_audio(path, audio))
    return paths


def _pseudo_label(launcher: list[str], corpus: Path, out: Path, store: Path, threads: int) -> float:
    return _k2d(launcher, ["pseudo-label", str(corpus), "--out", str(out), "--teacher", "whisper-base", "--beam-size", "1",
                           "--compute-type", "int8", "--cpu-threads", str(threads), "--store", str(store)])


def _k2d(launcher: list[str], arguments: list[str]) -> float:
    """Run ``k2d`` under a launcher; return its wall time. One CTranslate2 thread per process, whatever the
    launcher: int8 decodes with another thread count may differ in a token on some CPUs (an AVX2-only EPYC
    did), and these tests compare the bytes one process and two write, not the kernels' thread splits."""
    command = [*launcher, "-m", "k2d_cli", *arguments]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(THREADS)  # what CTranslate2's default (validate's) follows; torchrun's default too
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return time.perf_counter() - started


@pytest.mark.slow
def test_two_processes_write_the_rows_one_process_writes(registry, tmp_path):
    corpus = tmp_path / "corpus"
    assert len(_corpus(corpus)) >= 10
    single, double = tmp_path / "one" / "pseudo", tmp_path / "two" / "pseudo"
    one_s = _pseudo_label([sys.executable], corpus, single, registry.store, threads=THREADS)
    # the shipped CPU config (torchrun launcher): `--cpu --num_processes 2` would start one process without MPI
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(REPO / "configs/accelerate/cpu-2proc.yaml"), "--main_process_port", str(free_port())]
    two_s = _pseudo_label(accelerate, corpus, double, registry.store, threads=THREADS)

    rows_one = (single / "chunks.jsonl").read_text().splitlines()
    rows_two = (double / "chunks.jsonl").read_text().splitlines()
    assert len(rows_one) >= 10 and rows_two == rows_one  # same chunks, same order, same bytes
    markers = sorted((double / "shards").glob("*-of-002.json"))
    shards = [json.loads(m.read_text()) for m in markers]
    assert [s["index"] for s in shards] == [0, 1] and all(s["labelled_now"] == 6 for s in shards)
    assert [p for s in shards for p, _ in s["items"]] == [0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11]
    print(f"\npseudo-label 12 files: 1 process {one_s:.1f} s, 2 processes {two_s:.1f} s, "
          f"ratio {one_s / two_s:.2f}x; per-process rtfx {[s['rtfx'] for s in shards]}")

    # validation: whole batches of the single-process schedule per process, the same files out
    validated = {}
    for name, launcher in (("one", [sys.executable]), ("two", accelerate)):
        _k2d(launcher, ["validate", str(single / "chunks.jsonl"), "--out", str(tmp_path / name / "validate"),
                        "--validator", "whisper-base", "--store", str(registry.store)])
        validated[name] = [(tmp_path / name / "validate" / f).read_text() for f in ("validated.jsonl", "kept.jsonl",
                                                                                 "dropped.md")]
    assert validated["two"] == validated["one"] and validated["one"][1]

    # each shard resumes on its own: a lost part is relabelled by its owner alone, the merge is unchanged
    from k2d_train.stages.s2_pseudo_label import list_audio

    position = [audio_id for audio_id, _ in list_audio(corpus)].index("sub__clip07")
    (double / "parts" / "sub__clip07.jsonl").unlink()
    _pseudo_label(accelerate, corpus, double, registry.store, threads=THREADS)
    shards = [json.loads(m.read_text()) for m in sorted((double / "shards").glob("*-of-002.json"))]
    assert [s["labelled_now"] for s in shards] == [int(position % 2 == 0), int(position % 2 == 1)]
    assert (double / "chunks.jsonl").read_text().splitlines() == rows_one


def test_accelerate_configs_load_and_name_only_real_launcher_options():
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from transformers.models.whisper import modeling_whisper

    options = set(launch_command_parser()._option_string_actions)
    configs = {path.stem: path for path in (REPO / "configs/accelerate").glob("*.yaml")}
    assert {"cpu-2proc", "multi-gpu", "two-nodes", "fsdp"} <= set(configs)
    for path in configs.values():
        config = load_config_from_file(str(path))
        assert config.num_processes % config.num_machines == 0, path
        fsdp = yaml.safe_load(path.read_text()).get("fsdp_config", {})
        assert all(f"--{key}" in options for key in fsdp), path
        for layer in fsdp.get("fsdp_transformer_layer_cls_to_wrap", "").split(","):
            assert not layer or hasattr(modeling_whisper, layer), layer
    nodes = load_config_from_file(str(configs["two-nodes"]))
    assert nodes.num_machines == 2 and nodes.main_process_ip and nodes.main_process_port
    assert load_config_from_file(str(configs["fsdp"])).distributed_type == "FSDP"
