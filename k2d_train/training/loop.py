"""The one training loop every trained stage runs (encoder distillation, the K²D decoder, the CTC /
transducer head, the learning curve's students): what differs between them is only the model, the
batches and the loss, so those are what a stage hands over.

The loop owns what must not drift apart between stages (icefall's one ``train.py`` skeleton):

- Accelerate for devices and processes; batches sharded per process by :class:`BucketBatches` (same
  order on every process, every N-th batch each), so N processes see each example once per epoch;
- AdamW and a linear warm-up schedule whose horizon is right under N processes and gradient accumulation
  (Accelerate steps a prepared scheduler once per process per optimizer step);
- atomic checkpoints every ``save_every`` steps and mid-epoch resume at the exact batch;
- ``stop_after_steps``: checkpoint and return early (pre-emptible jobs); the stage then reports a pause;
- the tqdm bar with steps/s, one JSON line per step (``train_log.jsonl``), and an evaluation hook every
  ``eval_every`` steps on the main process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from k2d_train.training.checkpoints import CheckpointStore, StepLog
from k2d_train.training.encoder_states import BucketBatches

# (prepared modules, batch, step, generator) -> {"loss", ...}; the generator draws a stage's random masks and
# crops, seeded by the step training starts from, so a resumed run draws what it would have drawn
Loss = Callable[[tuple, Any, int, torch.Generator], dict[str, torch.Tensor]]
Evaluate = Callable[[tuple, int, dict], str | None]  # (prepared modules, step, record) -> a line to print


@dataclass
class Fitted:
    """What the loop hands back: the prepared modules (unwrap them with the accelerator), the step reached,
    the last step's record and the wall time; ``finished`` is False after a ``stop_after_steps`` pause."""

    modules: tuple
    step: int
    last: dict
    seconds: float
    finished: bool


def option(options, name: str, default):
    """A loop setting from a stage's options (every stage names max_steps, learning_rate, ...; the rest
    are optional and default here)."""
    value = getattr(options, name, default)
    return default if value is None else value


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether this CPU multiplies bf16 in hardware (avx512_bf16 or AMX); None where the OS does not say."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _precision(options) -> str:
    """The stage's mixed precision, ``auto`` resolved: bf16 on a CUDA device that has it, none on a CPU."""
    precision = option(options, "mixed_precision", "no")
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return precision


def _cpu_bf16(options) -> bool:
    """A CPU stage asking for bf16: the loop's own autocast, not Accelerate's (see :func:`cpu_autocast`)."""
    return _precision(options) == "bf16" and not torch.cuda.is_available()


def cpu_autocast(options):
    """The loop's own bf16 autocast where a CPU stage asks for bf16 (float32 weights and optimizer; fast where the
    CPU has bf16 units, emulated and slow where it has not), else no context. Not Accelerate's: its precision is
    one per process (``AcceleratorState`` refuses a second), and the stages of one ``k2d run`` or ``k2d curve``
    each choose their own. Re-enterable: made once per run, entered once per step."""
    import contextlib

    return torch.autocast("cpu", dtype=torch.bfloat16) if _cpu_bf16(options) else contextlib.nullcontext()


def make_accelerator(options):
    """Accelerate with the stage's mixed precision on CUDA (a CPU's bf16 is :func:`cpu_autocast`) and gradient
    accumulation, every process seeded alike."""
    import warnings

    from accelerate import Accelerator
    from accelerate.utils import set_seed

    precision = _precision(options)
    if _cpu_bf16(options):
        precision = "no"
        if cpu_has_native_bf16() is False:
            warnings.warn("mixed_precision: bf16 on a CPU without avx512_bf16 or AMX is emulated and may be slower "
                          "than float32; set mixed_precision: no", stacklevel=2)
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=option(options, "grad_accum", 1))
    set_seed(options.seed)
    return accelerator


def fit(accelerator, modules: Sequence[torch.nn.Module], params: list[torch.nn.Parameter], items: Sequence,
        buckets: list[int], collate: Callable, loss: Loss, options, run_dir: Path, desc: str, resume: bool = True,
        evaluate: Evaluate | None = None) -> Fitted:
    """Train ``params`` (of ``modules``) on ``items`` batched by length ``buckets`` until ``options.max_steps``."""
    from transformers import get_linear_schedule_with_warmup

    max_steps, processes = options.max_steps, accelerator.num_processes
    grad_accum, eval_every = option(options, "grad_accum", 1), option(options, "eval_every", 0)
    sampler = BucketBatches(buckets, options.batch_size, options.seed, processes, accelerator.process_index)
    loader = torch.utils.data.DataLoader(items, batch_sampler=sampler, collate_fn=collate)
    optimizer = torch.optim.AdamW(params, lr=options.learning_rate, weight_decay=option(options, "weight_decay", 0.0))
    # Accelerate steps a prepared scheduler once per process at every optimizer step: scale its horizon so the
    # learning rate reaches zero at max_steps under any number of processes
    scheduler = get_linear_schedule_with_warmup(optimizer, options.warmup_steps * processes, max_steps * processes)
    *prepared, optimizer, scheduler = accelerator.prepare(*modules, optimizer, scheduler)
    prepared = tuple(prepared)
    checkpoints = CheckpointStore(run_dir / "checkpoints", option(options, "keep_checkpoints", 2))
    step = checkpoints.restore(accelerator) if resume else 0
    generator = torch.Generator().manual_seed(options.seed + step)
    pause = option(options, "stop_after_steps", 0)
    stop_at = min(max_steps, step + pause) if pause else max_steps
    log = StepLog(run_dir, desc, max_steps, step, accelerator, checkpoints, options.save_every, stop_at)
    for module in prepared:
        module.train()
    last: dict = {}
    autocast = cpu_autocast(options)
    while step < stop_at:
        sampler.use_epoch(*divmod(step * grad_accum, sampler.per_process()))  # this process's batches so far
        for batch in loader:
            with accelerator.accumulate(prepared[0]):
                with autocast:
                    losses = loss(prepared, batch, step + 1, generator)
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            last = {"step": step, **{k: round(float(v.detach()), 4) for k, v in losses.items()},
                    "lr": scheduler.get_last_lr()[0]}
            if evaluate and eval_every and accelerator.is_main_process and (step % eval_every == 0 or step == max_steps):
                line = evaluate(prepared, step, last)
                if line:
                    log.write(line)
            log.stepped(last)
            if step >= stop_at:
                break
    log.close()
    return Fitted(prepared, step, last, log.seconds, step >= max_steps)


__all__ = ["Fitted", "fit", "make_accelerator"]
