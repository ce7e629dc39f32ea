"""``k2d distill-ctc``: stage 2 of the seed method — a CTC or transducer head on the distilled encoder.

Yang et al. (arXiv 2303.10917) pre-train a student encoder on teachers' embeddings (stage 1, here
``k2d distill-encoder``), then fine-tune it on the ASR task with a neural transducer. Here the head learns
from the same validated pseudo-labels as the K²D decoder, in units of Mandarin characters + English
pieces (``k2d_train.labels.units``). The distilled encoder is frozen (its states are cached once, like the
decoder stage's), optionally with its top layers trained too. SpecAugment-style masks fall on the
cached states; the out-of-domain dev set picks the kept step; resumable; progress bars.

``streaming: true`` trains on the frames the streaming server computes (``k2d.streaming``: each 0.64 s
chunk encoded with 1.28 s of left context and no future), so the same head runs incrementally.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from k2d.context import ContextPolicy
from k2d.manifest import read_manifest
from k2d.scoring import ErrorCounts, mer_counts
from k2d.streaming import StreamWindows
from k2d_train.labels.units import UnitCoder, build_units
from k2d_train.pipeline.options import CTCOptions
from k2d_train.pipeline.sharding import Processes
from k2d_train.training.augment import mask_states
from k2d_train.training.encoder_states import (
    STUDENT_STATES,
    ClipReader,
    EncoderStates,
    cache_name,
    encoder_digest,
    save_states,
    student_identity,
)
from k2d_train.training.loop import fit, make_accelerator
from k2d_train.training.losses import rnnt_loss


class CTCHead(torch.nn.Module):
    def __init__(self, width: int, hidden: int, units: int):
        super().__init__()
        self.norm, self.inner, self.out = torch.nn.LayerNorm(width), torch.nn.Linear(width, hidden), \
            torch.nn.Linear(hidden, units)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.inner(self.norm(states)))).log_softmax(-1)


class TransducerHead(torch.nn.Module):
    """Encoder projection + stateless predictor (the last ``context`` units' embeddings) + joiner."""

    def __init__(self, width: int, joint: int, units: int, context: int):
        super().__init__()
        self.context = context
        self.norm, self.enc = torch.nn.LayerNorm(width), torch.nn.Linear(width, joint)
        self.embed = torch.nn.Embedding(units, joint)
        self.pred = torch.nn.Linear(context * joint, joint)
        self.out = torch.nn.Linear(joint, units)

    def encode(self, states: torch.Tensor) -> torch.Tensor:
        return self.enc(self.norm(states))

    def predict(self, targets: torch.Tensor, blank: int = 0) -> torch.Tensor:
        """(B, U) → (B, U + 1, J): the predictor's output before each label and after the last."""
        history = F.pad(targets, (self.context, 0), value=blank)
        steps = [history[:, i : i + targets.shape[1] + 1] for i in range(self.context)]
        return self.pred(torch.cat([self.embed(s) for s in steps], dim=-1))

    def joint_logits(self, encoded: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(encoded[:, :, None] + predicted[:, None]))

    def forward(self, states: torch.Tensor, frames: torch.Tensor, targets: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
        """A batch's mean transducer loss, one item at a time (the joint tensor is T x (U + 1) x V per item).
        The loss is the forward pass so that a step is one call of the module: under several processes the
        gradient synchronisation of DistributedDataParallel hangs on exactly that call."""
        losses = []
        for b in range(states.shape[0]):
            t, u = int(frames[b]), int(lengths[b])
            item = targets[b : b + 1, :u]
            logits = self.joint_logits(self.encode(states[b : b + 1, :t]), self.predict(item))
            losses.append(rnnt_loss(logits, item, frames[b : b + 1], lengths[b : b + 1]))
        return torch.stack(losses).mean()

    def numpy_weights(self) -> dict[str, np.ndarray]:
        """What greedy search needs at serving time (``k2d.transducer_engine.transducer_greedy``)."""
        grab = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
        return {"context": np.array(self.context), "embed": grab(self.embed.weight), "pred_w": grab(self.pred.weight.T),
                "pred_b": grab(self.pred.bias), "out_w": grab(self.out.weight.T), "out_b": grab(self.out.bias)}


def make_head(options: CTCOptions, width: int, units: int) -> torch.nn.Module:
    if options.head == "ctc":
        return CTCHead(width, options.hidden, units)
    return TransducerHead(width, options.joint, units, options.context)


def stream_states(encoder, audio: np.ndarray, windows: StreamWindows, policy: ContextPolicy) -> torch.Tensor:
    """The frames the streaming server computes: every chunk encoded with its left context, its own frames kept."""
    from k2d.features import log_mel
    from k2d_train.training.encoder import encode

    kept = []
    for index in range(windows.chunks(len(audio))):
        window, first = windows.window(audio, index)
        features = torch.from_numpy(log_mel(window, policy.frames(len(window))))[None]
        hidden, _ = encode(encoder, features)
        kept.append(hidden[0, first : first + windows.chunk_frames])
    return torch.cat(kept)


class States:
    """Frozen-encoder states of every clip the head learns from (cached as float16, like EncoderStates)."""

    def __init__(self, encoder, folder: Path, options: CTCOptions, policy: ContextPolicy):
        """Keyed by the encoder alone (stage 6's key): a folder shared with the decoder students reuses theirs,
        which stage 6 may have computed by CTranslate2 (float32, within ~1e-3 of transformers': below the cache's
        float16 rounding, as for the teacher's shared states)."""
        self.encoder, self.options, self.policy = encoder, options, policy
        identity = student_identity(encoder_digest(encoder), policy)
        self.windows = options.windows
        if self.windows is None:
            self.plain = EncoderStates(encoder, folder, torch.device("cpu"), policy.frames, identity=identity)
        self.folder, self.identity = folder, f"{identity}/stream{self.windows}"
        self.reader = ClipReader()

    @torch.no_grad()
    def get(self, audio: Path, start: float, end: float, key: str) -> torch.Tensor:
        if self.windows is None:
            return self.plain.get(audio, start, end, key)["final"]
        path = self.folder / cache_name(key, audio, start, end, self.identity)
        if path.exists():
            return torch.from_numpy(np.load(path)["final"].astype(np.float32))
        states = stream_states(self.encoder, self.reader.clip(audio, start, end), self.windows, self.policy)
        save_states(path, {"final": states.numpy().astype(np.float16)})
        return torch.from_numpy(states.numpy().astype(np.float16).astype(np.float32))


def _frames(clip_s: float) -> int:
    return int(np.ceil(clip_s / 0.02)) + 1


def head_loss(head, states: torch.Tensor, frames: torch.Tensor, targets: torch.Tensor,
              lengths: torch.Tensor) -> torch.Tensor:
    """The batch's loss through the head's forward pass (``head`` may be wrapped for several processes)."""
    if isinstance(getattr(head, "module", head), CTCHead):
        logprobs = head(states).transpose(0, 1)  # (T, B, V)
        return F.ctc_loss(logprobs, targets, frames, lengths, blank=0, reduction="mean", zero_infinity=True)
    return head(states, frames, targets, lengths)


@torch.no_grad()
def greedy(head, states: torch.Tensor) -> list[int]:
    """Unit ids of one clip's states, as the server decodes them (k2d.ctc_engine)."""
    from k2d.ctc_engine import ctc_greedy
    from k2d.transducer_engine import transducer_greedy

    if isinstance(head, CTCHead):
        emitted, _ = ctc_greedy(head(states[None])[0].numpy(), 0)
    else:
        emitted, _ = transducer_greedy(head.encode(states[None])[0].numpy(), head.numpy_weights(), 0)
    return [u for _, u in emitted]


def dev_mer(head, states: States, dev: Path, coder: UnitCoder, limit: int) -> float:
    counts = ErrorCounts()
    head.eval()
    for index, row in enumerate(list(read_manifest(dev))[:limit]):
        hidden = states.get(row.path(dev), 0.0, 1e9, f"dev-{dev.stem}-{index}")
        counts += mer_counts(row.text or "", coder.units.text(greedy(head, hidden)))
    head.train()
    return counts.rate


def distill_ctc(student_dir: Path, kept: Path, run_dir: Path, options: CTCOptions, dev: Path | None = None,
                out_dir: Path | None = None, resume: bool = True, shared: Path | None = None) -> dict:
    """Train the head; write ``out_dir`` (head weights, units, options, the encoder's policy) for export.
    ``shared``: the folder of the frozen encoder's states that stage 6's students on it wrote (or will read)."""
    from transformers import WhisperForConditionalGeneration

    accelerator = make_accelerator(options)
    run_dir.mkdir(parents=True, exist_ok=True)
    encoder = WhisperForConditionalGeneration.from_pretrained(student_dir).model.encoder.eval()
    policy = options.policy(ContextPolicy.of_model(student_dir))
    rows = [r for r in read_manifest(kept) if (r.extra.get("teacher_text") or "").strip()]
    states = States(encoder, shared / STUDENT_STATES if shared else run_dir / "encoder_cache", options, policy)
    examples = []
    processes = Processes.current()
    if processes.distributed:  # each process fills its share of the state cache
        processes.share(rows, lambda r: states.get(r.path(kept), r.extra["start"], r.extra["end"], r.extra["id"]),
                        "encoder states (frozen)")
    with accelerator.main_process_first():  # the main process writes the units; the others read them
        coder = build_units([r.extra["teacher_text"] for r in rows], run_dir / "units", options.english_vocab,
                            options.label_script)
        for row in tqdm(rows, desc="encoder states (frozen)", disable=not accelerator.is_main_process):
            ids = coder.encode(row.extra["teacher_text"], options.label_script)
            hidden = states.get(row.path(kept), row.extra["start"], row.extra["end"], row.extra["id"])
            usable = min(len(hidden), _frames(row.extra["end"] - row.extra["start"]))
            if ids and usable > len(ids):
                examples.append((hidden[:usable], ids))
    if not examples:
        raise ValueError(f"{kept}: no chunk with a label to learn from")
    head = make_head(options, encoder.config.d_model, len(coder.units))
    best = _best_state(run_dir)

    def loss(modules, batch, step, generator):
        return {"loss": head_loss(modules[0], *_collate([examples[i] for i in batch], options, generator))}

    def evaluate(modules, step, record):
        nonlocal best
        record["dev_mer"] = round(dev_mer(accelerator.unwrap_model(modules[0]), states, dev, coder, options.dev_limit), 4)
        if best is None or record["dev_mer"] < best["dev_mer"]:
            best = {"step": step, "dev_mer": record["dev_mer"]}
            _save_head(accelerator.unwrap_model(modules[0]), run_dir / "best", best)
        return f"step {step}: dev MER {record['dev_mer']}"

    fitted = fit(accelerator, [head], list(head.parameters()), list(range(len(examples))),
                 [len(h) // 100 for h, _ in examples], lambda b: b, loss, options, run_dir, f"distill {options.head}",
                 resume, evaluate if dev is not None else None)
    step, last, head = fitted.step, fitted.last, accelerator.unwrap_model(fitted.modules[0])
    report = {"steps": step, "examples": len(examples), "units": len(coder.units), "last": last, "best": best,
              "options": asdict(options), "context": policy.describe(), "seconds": fitted.seconds}
    if accelerator.is_main_process and fitted.finished:  # one writer of the kept head and the published folder
        if best is None:
            _save_head(head, run_dir / "best", {"step": step})
        if out_dir is not None:
            _publish(run_dir, student_dir, out_dir, options, report)
    accelerator.wait_for_everyone()
    return report


def _collate(items, options: CTCOptions, generator: torch.Generator):
    frames = torch.tensor([len(h) for h, _ in items])
    lengths = torch.tensor([len(ids) for _, ids in items])
    states = torch.zeros(len(items), int(frames.max()), items[0][0].shape[1])
    targets = torch.zeros(len(items), int(lengths.max()), dtype=torch.long)
    for i, (hidden, ids) in enumerate(items):
        states[i, : len(hidden)] = hidden
        targets[i, : len(ids)] = torch.tensor(ids)
    return mask_states(states, generator, options.mask_time, options.mask_channels), frames, targets, lengths


def _best_state(run_dir: Path) -> dict | None:
    marker = run_dir / "best" / "k2d_best.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def _save_head(head, folder: Path, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), folder / "head.pt.tmp")
    (folder / "head.pt.tmp").replace(folder / "head.pt")
    (folder / "k2d_best.json").write_text(json.dumps(state))


def _publish(run_dir: Path, student_dir: Path, out_dir: Path, options: CTCOptions, report: dict) -> None:
    """The trained head with what export needs: units, options, the encoder it reads (by path)."""
    from k2d_train.store.publish import partial_dir, publish

    staging = partial_dir(out_dir)
    staging.mkdir()
    for path in (run_dir / "units").iterdir():
        (staging / path.name).write_bytes(path.read_bytes())
    (staging / "head.pt").write_bytes((run_dir / "best" / "head.pt").read_bytes())
    (staging / "k2d_ctc.json").write_text(json.dumps({"options": asdict(options), "encoder": str(student_dir),
                                                      "report": report}, indent=2, default=str))
    publish(staging, out_dir)
