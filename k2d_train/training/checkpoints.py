"""Atomic, resumable training checkpoints.

Each checkpoint is Accelerate's full state (model, optimizer, scheduler, RNG of every process)
written under ``step-N.partial`` and renamed when complete; ``latest`` names the newest one and
is replaced atomically. A crash mid-save therefore leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from k2d.atomic import atomic_write_text
from k2d_train.store.publish import partial_dir


class CheckpointStore:
    def __init__(self, folder: Path, keep: int = 2):
        self.folder, self.keep = folder, max(1, keep)

    def latest(self) -> Path | None:
        pointer = self.folder / "latest"
        if not pointer.exists():
            return None
        path = self.folder / pointer.read_text().strip()
        return path if (path / "k2d_state.json").exists() else None

    def save(self, accelerator, step: int) -> Path:
        final = self.folder / f"step-{step:06d}"
        staging = final.with_name(final.name + ".partial")
        if accelerator.is_main_process:
            partial_dir(final)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (staging / "k2d_state.json").write_text(json.dumps({"step": step}))
            shutil.rmtree(final, ignore_errors=True)
            staging.replace(final)
            atomic_write_text(self.folder / "latest", final.name)
            self._prune()
        accelerator.wait_for_everyone()
        return final

    def _prune(self) -> None:
        done = sorted(p for p in self.folder.glob("step-*") if p.is_dir() and not p.name.endswith(".partial"))
        for old in done[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def restore(self, accelerator) -> int:
        """Load the newest checkpoint into the prepared objects; return its step (0 if none)."""
        latest = self.latest()
        if latest is None:
            return 0
        accelerator.load_state(str(latest))
        return int(json.loads((latest / "k2d_state.json").read_text())["step"])


class StepLog:
    """A training stage's bookkeeping per optimizer step, the same in every stage: the progress bar (loss,
    steps/s), one JSONL line per step (main process only) and a checkpoint every ``save_every`` steps and
    at ``last_step``."""

    def __init__(self, run_dir: Path, desc: str, total: int, step: int, accelerator, checkpoints: CheckpointStore,
                 save_every: int, last_step: int | None = None):
        import time

        from tqdm import tqdm

        self.accelerator, self.checkpoints, self.save_every = accelerator, checkpoints, save_every
        self.last_step = total if last_step is None else last_step
        main = accelerator.is_main_process
        self.progress = tqdm(total=total, initial=step, desc=desc, disable=not main)
        self.log = _log_from(run_dir / "train_log.jsonl", step) if main else None
        self.first, self.started, self._clock = step, time.perf_counter(), time.perf_counter

    @property
    def seconds(self) -> float:
        return round(self._clock() - self.started, 1)

    def write(self, message: str) -> None:
        self.progress.write(message)

    def stepped(self, record: dict) -> None:
        """After step ``record["step"]``: bar, log line, checkpoint when due."""
        step = record["step"]
        self.progress.update(1)
        self.progress.set_postfix(loss=record.get("loss"), steps_s=f"{(step - self.first) / max(self.seconds, 1e-9):.2f}")
        if self.log:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()
        if step % self.save_every == 0 or step >= self.last_step:
            self.checkpoints.save(self.accelerator, step)

    def close(self) -> None:
        self.progress.close()
        if self.log:
            self.log.close()


def _record(row: str) -> dict | None:
    try:
        return json.loads(row)
    except json.JSONDecodeError:
        return None


def _log_from(path: Path, step: int):
    """The step log, opened to continue from ``step``: rows of a run that went further before it was
    interrupted (after its last checkpoint), or of an earlier run when this one starts afresh, are dropped,
    so the log holds each step once, as it was trained. A last row torn by the kill is dropped too."""
    rows = path.read_text().splitlines() if path.exists() and step else []
    kept = [row for row in rows if (record := _record(row)) is not None and record.get("step", 0) <= step]
    atomic_write_text(path, "".join(row + "\n" for row in kept))
    return path.open("a")
