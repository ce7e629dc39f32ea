"""Atomic, shareable file writes: the one helper every writer of the store and of a run uses.

A temporary file in the same folder is renamed over the target, so a reader (the server, a rerun,
another process) never sees half a file. The result is made readable by everyone (0644 by
default) because the store is shared: ``make demo`` may write it as root on the host while the
serving container reads it as uid 10001 over a bind mount; ``mkstemp``'s 0600 made that fail.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

SHARED_FILE_MODE = 0o644


@contextmanager
def atomic_writer(path: Path, mode: int = SHARED_FILE_MODE) -> Iterator[IO[str]]:
    """A text file handle whose content replaces ``path`` only when the block ends without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, mode: int = SHARED_FILE_MODE) -> Path:
    """Write ``text`` to ``path`` atomically and readable by the serving user; returns ``path``."""
    with atomic_writer(path, mode) as fh:
        fh.write(text)
    return path
