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
