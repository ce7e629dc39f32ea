"""Atomic publication of a model directory.

A model directory is built under ``<name>.partial`` and renamed only when complete, so a crash
or Ctrl-C never leaves something that looks like a usable model. Files are made world-readable
because the serving container runs as a non-root user over a mounted store.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def partial_dir(final: Path) -> Path:
    """A fresh, empty-or-absent staging path next to ``final``."""
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    return staging


def publish(staging: Path, final: Path) -> Path:
    for path in staging.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(final, ignore_errors=True)
    staging.replace(final)
    return final
