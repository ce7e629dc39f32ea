"""``k2d distill``: train the student on the kept chunks with CE on pseudo labels + KL to the teacher.

The student's encoder is the teacher's, frozen, so one encoder pass per chunk serves both models
and can be cached to disk (the CPU's biggest saving). Runs under Accelerate: ``accelerate launch
-m k2d_cli distill ...`` gives multi-GPU/multi-node with no code change. Checkpoints are whole
directories renamed into place, and the data order is a function of (seed, epoch), so
``--resume`` continues exactly where the last checkpoint stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from k2d.audio import SAMPLE_RATE, decode_audio
from k2d.manifest import read_manifest
from k2d_train.checkpoints import CheckpointStore
from k2d_train.decoding import whisper_prompt
from k2d_train.features import whisper_features
from k2d_train.hf_decode import greedy_decode
from k2d_train.losses import LossWeights, distillation_loss
from k2d_train.text import ErrorCounts, mer_counts


@dataclass
class DistillOptions:
    ce_weight: float = 0.8
    kl_weight: float = 1.0
    temperature: float = 2.0
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    max_steps: int = 200
    batch_size: int = 4
    grad_accum: int = 1
    save_every: int = 50
    eval_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    use_nbest: bool = False
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, none on CPU
    cache_encoder: bool = True
    dev_limit: int = 40
    stop_after_steps: int | None = None  # pause after this many steps in one invocation (pre-emptible jobs)


@dataclass
class Example:
    key: str
    audio: Path
    start: float
    end: float
    tokens: list[int]
    prompt_len: int


def build_examples(kept: Path, tokenizer, use_nbest: bool) -> list[Example]:
    """One example per kept chunk (its timestamped label), plus one per extra N-best hypothesis."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    examples = []
    for row in read_manifest(kept):
        prompt = whisper_prompt(tokenizer, row.extra.get("language"))
        labels = [row.extra["teacher_label"]] + (row.extra.get("nbest", [])[1:] if use_nbest else [])
        for label in labels:  # N-best hypotheses share the chunk's encoder output (same key)
            tokens = prompt + tokenizer.encode(label, add_special_tokens=False) + [eot]
            examples.append(Example(row.extra["id"], row.path(kept), row.extra["start"], row.extra["end"],
                                    tokens[:448], len(prompt)))
    return examples


class EncoderCache:
    """Encoder outputs of the frozen encoder, computed once per chunk (float16 .npy files)."""

    def __init__(self, encoder, folder: Path | None, device: torch.device):
        self.encoder, self.folder, self.device = encoder, folder, device
        self._audio: tuple[Path, np.ndarray] | None = None

    def _features(self, audio: Path, start: float, end: float) -> np.ndarray:
        if self._audio is None or self._audio[0] != audio:
            self._audio = (audio, decode_audio(audio))
        return whisper_features(self._audio[1][int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)])

    @torch.no_grad()
    def encode(self, audio: Path, start: float, end: float, key: str) -> torch.Tensor:
        path = self.folder / f"{key}.npy" if self.folder else None
        if path is not None and path.exists():
            return torch.from_numpy(np.load(path).astype(np.float32))
        features = torch.from_numpy(self._features(audio, start, end))[None].to(self.device)
        # Always the float16-rounded value, cached or not: a resumed run must see identical inputs.
        hidden = self.encoder(features).last_hidden_state[0].float().cpu().numpy().astype(np.float16)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, hidden)
            tmp.replace(path)
        return torch.from_numpy(hidden.astype(np.float32))


class EpochBatches(torch.utils.data.Sampler):
    """Shuffled batches whose order depends only on (seed, epoch): the basis of exact resume."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed, self.epoch = size, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        return iter([order[i : i + self.batch_size] for i in range(0, self.size, self.batch_size)])

    def __len__(self) -> int:
        return (self.size + self.batch_size - 1) // self.batch_size


def collate(items: list[tuple[torch.Tensor, list[int], int]], pad: int) -> dict[str, torch.Tensor]:
    """Teacher-forcing tensors; the mask covers real label tokens only (not prompt, not padding)."""
    longest = max(len(tokens) for _, tokens, _ in items)
    seqs = torch.full((len(items), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(items), longest - 1), dtype=torch.bool)
    for i, (_, tokens, prompt_len) in enumerate(items):
        seqs[i, : len(tokens)] = torch.tensor(tokens)
        mask[i, prompt_len - 1 : len(tokens) - 1] = True
    encoder = torch.stack([enc for enc, _, _ in items])
    return {"encoder": encoder, "inputs": seqs[:, :-1], "labels": seqs[:, 1:], "mask": mask}


def dev_mer(student, cache: EncoderCache, dev: Path, tokenizer, limit: int, device) -> float:
    rows = list(read_manifest(dev))[:limit]
    prompt = whisper_prompt(tokenizer, rows[0].extra.get("language") if rows else None)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    total = ErrorCounts()
    student.eval()
    for begin in range(0, len(rows), 8):
        batch = rows[begin : begin + 8]
        hidden = torch.stack([cache.encode(r.path(dev), 0.0, 1e9, f"dev-{begin + i}") for i, r in enumerate(batch)])
        for row, ids in zip(batch, greedy_decode(student, hidden.to(device), prompt, eot), strict=True):
            total = total + mer_counts(row.text or "", tokenizer.decode(ids, skip_special_tokens=True))
    student.train()
    return total.rate


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def distill(teacher_dir: Path, student_dir: Path, kept: Path, run_dir: Path, options: DistillOptions,
            dev: Path | None = None, resume: bool = False, final_dir: Path | None = None) -> dict:
    """Train; write checkpoints under ``run_dir`` and the final student to ``final_dir``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer, get_linear_schedule_with_warmup

    accelerator = Accelerator(mixed_precision=_mixed_precision(options.mixed_precision),
                              gradient_accumulation_steps=options.grad_accum)
    set_seed(options.seed)
    tokenizer = WhisperTokenizer.from_pretrained(student_dir)
    teacher = WhisperForConditionalGeneration.from_pretrained(teacher_dir).to(accelerator.device).eval()
    student = WhisperForConditionalGeneration.from_pretrained(student_dir)
    student.model.encoder.requires_grad_(False)
    cache = EncoderCache(teacher.model.encoder, run_dir / "encoder_cache" if options.cache_encoder else None,
                         accelerator.device)
    examples = build_examples(kept, tokenizer, options.use_nbest)
    if not examples:
        raise ValueError(f"{kept}: no kept chunks to train on (loosen the validation rule or α)")
    hidden = {}
    for ex in tqdm(examples, desc="encoder outputs", disable=not accelerator.is_main_process):
        hidden.setdefault(ex.key, cache.encode(ex.audio, ex.start, ex.end, ex.key))
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    sampler = EpochBatches(len(examples), options.batch_size, options.seed)
    loader = torch.utils.data.DataLoader(
        [(hidden[ex.key], ex.tokens, ex.prompt_len) for ex in examples], batch_sampler=sampler,
        collate_fn=lambda b: collate(b, pad)
    )
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=options.learning_rate,
                                  weight_decay=options.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, options.warmup_steps, options.max_steps)
    student, optimizer, loader, scheduler = accelerator.prepare(student, optimizer, loader, scheduler)
    checkpoints = CheckpointStore(run_dir / "checkpoints", options.keep_checkpoints)
    step = checkpoints.restore(accelerator) if resume else 0
    weights = LossWeights(options.ce_weight, options.kl_weight, options.temperature)
    log = (run_dir / "train_log.jsonl").open("a")
    progress = tqdm(total=options.max_steps, initial=step, desc="distill", disable=not accelerator.is_main_process)
    started, first_step, last = time.perf_counter(), step, {}
    student.train()
    stop_at = min(options.max_steps, step + options.stop_after_steps) if options.stop_after_steps else options.max_steps
    while step < stop_at:
        consumed = step * options.grad_accum
        epoch, offset = divmod(consumed, len(loader))
        sampler.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, offset) if offset else loader
        for batch in batches:
            with accelerator.accumulate(student):
                encoder_outputs = (batch["encoder"],)
                with torch.no_grad():
                    teacher_logits = teacher(encoder_outputs=encoder_outputs, decoder_input_ids=batch["inputs"]).logits
                logits = student(encoder_outputs=encoder_outputs, decoder_input_ids=batch["inputs"]).logits
                losses = distillation_loss(logits, teacher_logits, batch["labels"], batch["mask"], weights)
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(student.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            last = {"step": step, **{k: round(float(v.detach()), 4) for k, v in losses.items()},
                    "lr": scheduler.get_last_lr()[0]}
            progress.update(1)
            rate = (step - first_step) / max(time.perf_counter() - started, 1e-9)
            progress.set_postfix(loss=last["loss"], steps_s=f"{rate:.2f}")
            if dev is not None and options.eval_every and step % options.eval_every == 0 and accelerator.is_main_process:
                last["dev_mer"] = round(dev_mer(accelerator.unwrap_model(student), cache, dev, tokenizer,
                                                options.dev_limit, accelerator.device), 4)
                progress.write(f"step {step}: dev MER {last['dev_mer']:.3f}")
            log.write(json.dumps(last) + "\n")
            log.flush()
            if step % options.save_every == 0 or step == stop_at:
                checkpoints.save(accelerator, step)
            if step >= stop_at:
                break
    progress.close()
    log.close()
    report = {"steps": step, "examples": len(examples), "last": last, "options": asdict(options),
              "seconds": round(time.perf_counter() - started, 1)}
    if final_dir is not None and accelerator.is_main_process and step >= options.max_steps:
        _save_final(accelerator.unwrap_model(student), student_dir, final_dir)
    (run_dir / "distill_report.json").write_text(json.dumps(report, indent=2))
    return report


def _save_final(student, student_dir: Path, final_dir: Path) -> None:
    from k2d_train.store.publish import partial_dir, publish

    staging = partial_dir(final_dir)
    student.save_pretrained(staging)
    for path in student_dir.iterdir():
        if path.is_file() and not path.name.startswith("model") and path.name != "config.json":
            (staging / path.name).write_bytes(path.read_bytes())
    publish(staging, final_dir)
