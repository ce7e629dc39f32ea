"""Atomic publication of a model directory.

A model directory is built under ``<name>.partial`` and renamed only when complete, so a crash
or Ctrl-C never leaves something that looks like a usable model. Files are made world-readable
because the serving container runs as a non-root user over a mounted store.

Both steps remove what is in their way. Given ``root`` (the store, for everything the store commands
write), they refuse to remove or replace anything that is not strictly inside it — a last line behind
:func:`k2d.registry.check_name`, which keeps names from pointing outside in the first place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from k2d.registry import inside


def partial_dir(final: Path, root: Path | None = None) -> Path:
    """A fresh, empty-or-absent staging path next to ``final``."""
    staging = final.with_name(final.name + ".partial")
    _check_within(staging, root)
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    return staging


def publish(staging: Path, final: Path, root: Path | None = None) -> Path:
    _check_within(final, root)
    _check_within(staging, root)
    for path in staging.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(final, ignore_errors=True)
    staging.replace(final)
    return final


def _check_within(path: Path, root: Path | None) -> None:
    if root is not None and (not inside(path, root) or path.resolve() == Path(root).resolve()):
        raise ValueError(f"refusing to replace {path}: it is not inside the model store {root}")


def write_student(model, init_dir: Path, out_dir: Path, extra: dict[str, str] | None = None) -> Path:
    """A transformers student's weights plus its init's tokenizer, feature and context files, published
    atomically; ``extra`` adds small text files (e.g. the step it was chosen at)."""
    staging = partial_dir(out_dir)
    model.save_pretrained(staging)
    for path in init_dir.iterdir():
        if path.is_file() and not path.name.startswith("model") and path.name != "config.json":
            (staging / path.name).write_bytes(path.read_bytes())
    for name, text in (extra or {}).items():
        (staging / name).write_text(text)
    return publish(staging, out_dir)


def copy_dir(source: Path, out_dir: Path) -> Path:
    """Publish a copy of a finished model folder under a new name."""
    staging = partial_dir(out_dir)
    shutil.copytree(source, staging)
    return publish(staging, out_dir)
