"""The teacher's next-token distributions, computed once per training example and kept on disk.

K²D trains only the student's decoder: the encoder is frozen, so the teacher's distribution at every
label position is the same every epoch. Running the teacher's six-layer decoder (and its 51,865-way
output projection) at every step costs about as much as the student's own forward pass; computing it
once turns each later step into student-only work, as distil-whisper does with its cached labels.

Only the top ``k`` tokens of each position are kept, as log-probabilities at the distillation
temperature over the *full* vocabulary (so the tail's mass is known exactly), which makes the loss an
exact KL over ``k + 1`` bins: the top ``k`` tokens and "everything else"
(:func:`k2d_train.training.losses.topk_kl_divergence`); ``k2d_train.training.losses`` tests the bound against the
full KL. How much the rest bin holds is recorded with the cache (``rest_mass_mean``), and it can be most of it:
Whisper base at T = 2 on the demo's 3,745 label positions keeps only 17 % of its mass in its top 64 tokens (33 %
in the top 1,024): there the loss mostly asks the student to put the same mass in its tail, and says little
about the tail's shape (the full KL's "dark knowledge").

Which encoder states the teacher's decoder reads is a choice (``DistillOptions.kl_states``): its own
30 s states (the paper), or the student's short-context states, when that encoder was distilled from
the teacher's (stage 5): then no example ever needs a 30 s encoder pass, the dearest step on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


@dataclass(frozen=True)
class TopK:
    """One example's targets: ``(positions, k)`` teacher log-probabilities and their token ids."""

    logprobs: torch.Tensor  # float32
    indices: torch.Tensor  # int64


def fingerprint(teacher_identity: str, states_identity: str, spans: Sequence[str],
                token_lists: Sequence[Sequence[int]], k: int, temperature: float) -> str:
    """What the targets depend on: the teacher, the states it read (which encoder, and of which audio spans: a
    cache shared by a curve's runs must not serve a chunk re-cut under the same tokens), every example's tokens,
    k and T."""
    digest = hashlib.sha1(f"{teacher_identity}|{states_identity}|{k}|{temperature:g}".encode())
    for span, tokens in zip(spans, token_lists, strict=True):
        digest.update(span.encode())
        digest.update(np.asarray(tokens, dtype=np.int32).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:20]


class TopKCache:
    """All examples' top-k targets in one ``.npz`` (float16 log-probs, int32 ids, per-example offsets),
    written atomically and reused only when its fingerprint matches."""

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint

    def load(self) -> list[TopK] | None:
        if not self.path.exists():
            return None
        with np.load(self.path) as stored:
            if str(stored["fingerprint"]) != self.fingerprint:
                return None
            logprobs, indices, offsets = stored["logprobs"], stored["indices"], stored["offsets"]
        return [TopK(torch.from_numpy(logprobs[a:b].astype(np.float32)), torch.from_numpy(indices[a:b].astype(np.int64)))
                for a, b in zip(offsets[:-1], offsets[1:], strict=True)]

    def save(self, targets: list[TopK]) -> None:
        offsets = np.cumsum([0] + [len(t.indices) for t in targets])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, fingerprint=np.array(self.fingerprint),
                 logprobs=np.concatenate([t.logprobs.numpy() for t in targets]).astype(np.float16),
                 indices=np.concatenate([t.indices.numpy() for t in targets]).astype(np.int32), offsets=offsets)
        tmp.replace(self.path)
        self.path.with_suffix(".json").write_text(json.dumps(
            {"fingerprint": self.fingerprint, "examples": len(targets), "positions": int(offsets[-1]),
             "k": int(targets[0].indices.shape[1]) if targets else 0, "rest_mass_mean": rest_mass(targets)}, indent=2))


def rest_mass(targets: Sequence[TopK]) -> float:
    """The teacher's mean probability (at the distillation temperature) outside each position's top k: what
    the k + 1-bin KL keeps only as one number."""
    if not targets:
        return 0.0
    kept = torch.cat([t.logprobs.float().exp().sum(-1) for t in targets])
    return round(float((1 - kept).clamp(min=0).mean()), 4)


@torch.no_grad()
def compute_topk(teacher, examples: Sequence, states: Callable[[object], torch.Tensor], k: int, temperature: float,
                 batch_size: int = 8, device: torch.device | str = "cpu", quiet: bool = False) -> list[TopK]:
    """Teacher-forced top-k log-probabilities at temperature T over each example's label positions.

    ``examples`` carry ``tokens`` (prompt + label + end) and ``prompt_len``; the positions kept are the ones
    the training loss masks in (the label tokens and the end token), in order. Examples whose states have
    one length are batched together (the decoder's cross-attention needs one length)."""
    by_frames: dict[int, list[int]] = {}
    for index, example in enumerate(examples):
        by_frames.setdefault(states(example).shape[0], []).append(index)
    out: dict[int, TopK] = {}
    with tqdm(total=len(examples), desc="teacher top-k", unit="ex", disable=quiet) as progress:
        for members in by_frames.values():
            for at in range(0, len(members), batch_size):
                batch = members[at : at + batch_size]
                out.update(zip(batch, _score_batch(teacher, [examples[i] for i in batch], states, k, temperature,
                                                   device), strict=True))
                progress.update(len(batch))
    return [out[i] for i in range(len(examples))]


def _score_batch(teacher, batch: list, states: Callable, k: int, temperature: float, device) -> list[TopK]:
    longest = max(len(ex.tokens) for ex in batch)
    inputs = torch.zeros((len(batch), longest - 1), dtype=torch.long)
    for row, ex in enumerate(batch):
        inputs[row, : len(ex.tokens) - 1] = torch.tensor(ex.tokens[:-1])
    hidden = torch.stack([states(ex).float() for ex in batch]).to(device)
    logits = teacher(encoder_outputs=(hidden,), decoder_input_ids=inputs.to(device)).logits.float()
    targets = []
    for row, ex in enumerate(batch):
        positions = logits[row, ex.prompt_len - 1 : len(ex.tokens) - 1] / temperature
        values, indices = torch.log_softmax(positions, dim=-1).topk(k, dim=-1)
        targets.append(TopK(values.cpu(), indices.cpu()))
    return targets
