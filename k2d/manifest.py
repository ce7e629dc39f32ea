"""The labelled-audio manifest used everywhere: JSONL rows ``{"audio": ..., "text": ...}``.

``audio`` is relative to the manifest file so a dataset folder can move as a whole. Extra keys
(``language``, ``start``, ``end``, ...) are kept as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from k2d.atomic import atomic_writer


class ManifestError(ValueError):
    """A manifest row that is not valid JSON or lacks its ``audio`` key."""


@dataclass
class ManifestRow:
    audio: str
    text: str | None = None
    extra: dict = field(default_factory=dict)

    def path(self, manifest: Path) -> Path:
        audio = Path(self.audio)
        return audio if audio.is_absolute() else manifest.parent / audio

    def to_json(self) -> dict:
        row = {"audio": self.audio}
        if self.text is not None:
            row["text"] = self.text
        return {**row, **self.extra}


def read_manifest(path: Path) -> Iterator[ManifestRow]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{path}:{number}: not JSON ({err.msg})") from err
            if not isinstance(raw, dict) or "audio" not in raw:
                raise ManifestError(f"{path}:{number}: a row needs an \"audio\" key")
            audio, text = raw.pop("audio"), raw.pop("text", None)
            yield ManifestRow(audio=audio, text=text, extra=raw)


def write_manifest(path: Path, rows: Iterable[ManifestRow | dict]) -> int:
    """Write atomically (temp file + rename): a crash never leaves a half manifest."""
    count = 0
    with atomic_writer(path) as fh:
        for row in rows:
            payload = row.to_json() if isinstance(row, ManifestRow) else row
            fh.write(json.dumps(payload, ensure_ascii=False) + "\n")
            count += 1
    return count
