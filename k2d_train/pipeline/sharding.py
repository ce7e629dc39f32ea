"""Split per-file work across the processes ``accelerate launch`` (torchrun) starts, deterministically.

Why Accelerate and not Ray: it is already a training dependency (no new package), distillation
already runs under the same launcher (one command shape for every stage, one config per cluster),
and its ``PartialState`` works on a CPU box with the gloo backend — so the multi-process path is
tested here, not only on a GPU cluster.

Why this shape:

* **Sharding by position in a sorted list** (item ``i`` → process ``i % N``): every process
  computes the same list on its own, no coordinator hands out work, and a re-run with the same N
  gives each process the same files. Work done under another N is still reused, because "done"
  is a per-file output on disk, not a property of the shard.
* **Done markers on the shared file system, then a barrier**: shards of one corpus finish hours
  apart (files differ in length). A collective barrier that waits that long hits the process
  group's timeout (30 min for gloo, less for NCCL); polling a marker file waits for any length of
  time, and the barrier that follows is reached by every process within seconds. The markers also
  carry each shard's item list and timing, so the main process can check that every process saw
  the same corpus and can report per-process throughput.
* **Nothing changes outside a launcher**: when ``WORLD_SIZE`` is unset or 1, ``Processes.current``
  returns a single-process group without importing torch or Accelerate, so ``k2d pseudo-label``
  behaves exactly as before.

Requirement: every process (every node) sees the same output folder (a shared file system),
because the main process merges files the others wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from k2d.atomic import atomic_write_text

T = TypeVar("T")


def launched_world_size() -> int:
    """Processes in this job, as torchrun / ``accelerate launch`` announce them (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE") or 1)


@dataclass
class Processes:
    """This process's place among the launched ones, and the one collective the stages need (a barrier)."""

    index: int = 0
    count: int = 1
    local_index: int = 0
    state: Any = None  # accelerate.PartialState when launched with more than one process

    @classmethod
    def current(cls) -> Processes:
        """The launched group; a plain single process (no torch import) outside a multi-process launch."""
        if launched_world_size() <= 1:
            return cls()
        import torch
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        # The group only coordinates (barrier); its backend follows the hardware so that a later
        # Accelerator in the same process (``k2d run``) shares a state that fits it: gloo on CPU.
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
        state = PartialState(cpu=cpu)
        return cls(state.process_index, state.num_processes, state.local_process_index, state)

    @property
    def distributed(self) -> bool:
        return self.count > 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def owns(self, position: int) -> bool:
        """Item ``position`` of the sorted list belongs to process ``position % count``."""
        return position % self.count == self.index

    def mine(self, items: Sequence[T]) -> list[tuple[int, T]]:
        """This process's share of ``items`` with each item's global position."""
        return [(position, item) for position, item in enumerate(items) if self.owns(position)]

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def share(self, items: Sequence[T], work: Callable[[T], object], desc: str) -> None:
        """``work`` on this process's share of ``items``, then a barrier. For work whose result lands in a disk
        cache that every process reads afterwards: each item is computed once in all, by one process, instead
        of once per process or by the main process alone while the others wait (on a 2-core box, half of the
        CPU). Every process gets the same count within one, so the barrier waits seconds, not the whole work."""
        from tqdm import tqdm

        for _, item in tqdm(self.mine(items), desc=desc + self.tag(), disable=not self.is_main):
            work(item)
        self.barrier()

    def tag(self) -> str:
        """A suffix for progress bars and logs: which process is talking."""
        return f" [{self.index + 1}/{self.count}]" if self.distributed else ""


def fingerprint(ids: Sequence[str]) -> str:
    """A short hash of an ordered id list: processes that listed a corpus differently must not merge."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


class ShardMarkers:
    """``<folder>/NNN-of-MMM.json`` per process: written when its shard is done, read by every process."""

    def __init__(self, folder: Path, processes: Processes):
        self.folder = folder
        self.processes = processes

    def path(self, index: int) -> Path:
        return self.folder / f"{index:03d}-of-{self.processes.count:03d}.json"

    def reset(self) -> None:
        """Main process: remove markers of earlier runs, then let everyone start (a short barrier)."""
        if self.processes.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            for stale in self.folder.glob("*-of-*.json"):
                stale.unlink()
        self.processes.barrier()

    def write(self, payload: dict) -> None:
        """Atomically, so a reader never sees half a marker."""
        atomic_write_text(self.path(self.processes.index), json.dumps(payload) + "\n")

    def wait_all(self, poll_s: float = 1.0, timeout_s: float | None = None) -> list[dict]:
        """Every shard's marker, in process order, once all exist; then the barrier (reached within seconds)."""
        wait_for_files([self.path(index) for index in range(self.processes.count)], poll_s, timeout_s)
        self.processes.barrier()
        return [json.loads(self.path(index).read_text()) for index in range(self.processes.count)]


def wait_for_files(paths: Sequence[Path], poll_s: float = 1.0, timeout_s: float | None = None) -> None:
    """Block until every path exists: a wait with no process-group timeout, for shards hours apart."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        missing = [path for path in paths if not path.exists()]
        if not missing:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {len(missing)} shard(s), e.g. {missing[0]}")
        time.sleep(poll_s)


def merge_order(markers: Sequence[dict], listing_ids: Sequence[str]) -> list[str]:
    """The single-process order of ids, after checking that the shards cover the listing exactly once."""
    expected = fingerprint(listing_ids)
    for marker in markers:
        if marker["fingerprint"] != expected:
            raise RuntimeError(f"process {marker['index']} listed a different corpus ({marker['fingerprint']} vs "
                               f"{expected}): do all nodes see the same files?")
    positions = sorted(position for marker in markers for position, _ in marker["items"])
    if positions != list(range(len(listing_ids))):
        raise RuntimeError(f"shards cover {len(positions)} item(s) of {len(listing_ids)}")
    return list(listing_ids)


def load_whisper_here(model: str, store: Path, device: str, compute_type: str, cpu_threads: int = 0,
                      processes: Processes | None = None):
    """faster-whisper's model on this process's device. On GPUs each process takes the GPU of its
    local rank: torchrun does not set ``CUDA_VISIBLE_DEVICES`` per process, so without an index every
    process of a node would load onto GPU 0."""
    from faster_whisper import WhisperModel

    from k2d_train.store.loading import ct2_dir

    index = processes.local_index if processes is not None and device != "cpu" else 0
    return WhisperModel(str(ct2_dir(model, store)), device=device, device_index=index, compute_type=compute_type,
                        cpu_threads=cpu_threads)
