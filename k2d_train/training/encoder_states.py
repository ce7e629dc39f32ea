"""Encoder outputs of a frozen encoder for every training chunk, computed once and cached on disk.

On a CPU the encoder is the expensive half of Whisper, and a frozen encoder gives the same output
every epoch: caching it (float16 ``.npz`` per chunk, written atomically) turns every later step
and every resumed run into decoder-only work. The same cache serves the teacher's 30 s states
(targets for encoder distillation, inputs of the teacher's decoder for the KL term) and a
student's short-context states (inputs of the student's decoder).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from k2d.audio import SAMPLE_RATE, decode_audio
from k2d.context import FULL_FRAMES, ContextPolicy
from k2d.features import log_mel
from k2d_train.training.encoder import encode


class ClipReader:
    """Pieces of long files: the last ``keep`` decoded files stay in memory, so chunks read in any
    order do not decode a lecture again and again."""

    def __init__(self, keep: int = 16):
        self.keep, self._files = keep, OrderedDict()

    def clip(self, audio: Path, start: float, end: float) -> np.ndarray:
        if audio not in self._files:
            self._files[audio] = decode_audio(audio)
            if len(self._files) > self.keep:
                self._files.popitem(last=False)
        self._files.move_to_end(audio)
        return self._files[audio][int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]


class CT2Encoder:
    """A frozen encoder run by CTranslate2 in float32: the same states as transformers' (max abs
    difference ~1e-3 on Whisper base) at a fraction of the CPU time. Final layer only."""

    def __init__(self, model_dir: Path, device: str = "cpu"):
        import ctranslate2

        self.model = ctranslate2.models.Whisper(str(model_dir), device=device, compute_type="float32")

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        import ctranslate2

        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features.cpu().numpy()))
        return torch.from_numpy(np.array(self.model.encode(storage, to_cpu=True)))


def span_key(audio: Path, start: float, end: float) -> str:
    """Which audio a chunk is: its file and span (what its cached states, and targets made on them, depend on)."""
    return f"{Path(audio).resolve()}|{start:.3f}|{end:.3f}"


def save_states(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """One chunk's states, written atomically under a name unique per process: launched processes start alike,
    so ``id`` alone can coincide, and a shared folder has several writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{id(arrays)}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def cache_name(key: str, audio: Path, start: float, end: float, identity: str) -> str:
    """A cache file's name: the readable ``key`` plus a digest of *what* was encoded — which file, which
    span, by which encoder at which input length. Chunk ids alone are not unique: ``c-r0`` names different
    spans under different validation rules, and every rule (and both training stages) shares one folder."""
    what = f"{span_key(audio, start, end)}|{identity}"
    digest = hashlib.sha1(what.encode()).hexdigest()[:16]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', key)[:80]}-{digest}.npz"


def weights_fingerprint(model_dir: Path) -> str:
    """A digest of a checkpoint's weight files: a retrained encoder never reads its predecessor's cache."""
    digest = hashlib.sha1()
    for path in sorted(Path(model_dir).glob("*.safetensors")) + sorted(Path(model_dir).glob("*.bin")):
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def encoder_digest(encoder: torch.nn.Module) -> str:
    """A digest of a frozen encoder's own weights (names, shapes, bytes), not of the whole checkpoint: students
    that share one encoder (every decoder depth of a learning curve, the CTC head on it) share its states, which
    at hours of audio take longer to make than such a point takes to train; a retrained encoder still never
    reads its predecessor's."""
    digest = hashlib.sha1()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


STUDENT_STATES = "student_encoder_cache"  # the folder of a student encoder's states, in a run or a shared folder


def student_identity(digest: str, policy: ContextPolicy) -> str:
    """A student encoder's states: its ``encoder_digest`` and input rule, the one key stages 6 and 7 share."""
    return f"encoder:{digest}@{policy}"


def teacher_identity(teacher_dir: Path) -> str:
    """The teacher's 30 s states, whichever engine computed them (CTranslate2 and transformers agree to ~1e-3):
    both training stages share one cache of them."""
    return f"teacher:{weights_fingerprint(teacher_dir)}@{FULL_FRAMES}"


class EncoderStates:
    def __init__(self, encoder, folder: Path | None, device: torch.device, frames_for: Callable[[int], int],
                 layers: tuple[int, ...] = (), keep_frames: Callable[[int], int] | None = None, identity: str = ""):
        """``identity`` names the encoder and its input length rule (part of every cache file's name)."""
        self.encoder, self.folder, self.device = encoder, folder, device
        self.frames_for, self.layers, self.keep_frames = frames_for, tuple(layers), keep_frames
        self.identity = identity
        self.reader = ClipReader()

    def path(self, audio: Path, start: float, end: float, key: str) -> Path | None:
        return self.folder / cache_name(key, audio, start, end, self.identity) if self.folder else None

    @torch.no_grad()
    def get(self, audio: Path, start: float, end: float, key: str) -> dict[str, torch.Tensor]:
        """``{"final": (frames, d), "layer<i>": ...}`` of exactly ``audio[start:end]``, as float32, always the
        float16-rounded value so a resumed run sees exactly what an uninterrupted one saw. ``final`` is kept
        whole (the teacher's decoder reads all of it); intermediate layers only up to ``keep_frames``."""
        path = self.path(audio, start, end, key)
        wanted = {"final", *(f"layer{i}" for i in self.layers)}
        if path is not None and path.exists():
            with np.load(path) as stored:
                if wanted <= set(stored.files):
                    return {name: torch.from_numpy(stored[name].astype(np.float32)) for name in stored.files}
        samples = self.reader.clip(audio, start, end)
        features = torch.from_numpy(log_mel(samples, self.frames_for(len(samples))))[None].to(self.device)
        if isinstance(self.encoder, CT2Encoder) and not self.layers:
            final, layers = self.encoder(features), {}
        else:
            final, layers = encode(self.encoder, features, list(self.layers))
        keep = self.keep_frames(len(samples)) if self.keep_frames else final.shape[1]
        arrays = {"final": final[0]} | {f"layer{i}": layers[i][0, :keep] for i in self.layers}
        arrays = {name: value.float().cpu().numpy().astype(np.float16) for name, value in arrays.items()}
        if path is not None:
            save_states(path, arrays)
        return {name: torch.from_numpy(value.astype(np.float32)) for name, value in arrays.items()}


class BucketBatches(torch.utils.data.Sampler):
    """Shuffled batches of examples that share a length bucket, in an order that depends only on
    (seed, epoch): batched tensors need one length, and exact resume needs a reproducible order.

    Under N processes each takes every N-th batch of that one order, the list wrapped round so every
    process gets the same count (a process that ran out first would leave the others waiting in the
    gradient all-reduce). Sharding is done here, not by Accelerate: its batch-sampler sharding assumes
    equal batch sizes and merged batches of different lengths, reporting more batches than it gave."""

    def __init__(self, buckets: list[int], batch_size: int, seed: int, processes: int = 1, index: int = 0):
        self.buckets, self.batch_size, self.seed, self.epoch, self.skip = buckets, batch_size, seed, 0, 0
        self.processes, self.index = processes, index

    def use_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start ``epoch`` after this process's first ``skip`` batches (resume). Not named set_epoch on
        purpose: Accelerate would drive that with its own iteration count, which restarts on resume."""
        self.epoch, self.skip = epoch, skip

    def _batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.buckets), generator=generator).tolist()
        groups: dict[int, list[int]] = {}
        for index in order:
            groups.setdefault(self.buckets[index], []).append(index)
        batches = [group[i : i + self.batch_size] for _, group in sorted(groups.items())
                   for i in range(0, len(group), self.batch_size)]
        shuffle = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffle]

    def __iter__(self):
        batches = self._batches()
        wrapped = (batches * self.processes)[: self.per_process() * self.processes]
        return iter(wrapped[self.index :: self.processes][self.skip :])

    def per_process(self) -> int:
        """Batches each process takes per epoch."""
        counts: dict[int, int] = {}
        for bucket in self.buckets:
            counts[bucket] = counts.get(bucket, 0) + 1
        total = sum((n + self.batch_size - 1) // self.batch_size for n in counts.values())
        return -(-total // self.processes)

    def __len__(self) -> int:
        return self.per_process() - self.skip
