"""Real corpora as pseudo-label input: a Hugging Face ``datasets`` dataset, streamed.

Accepted: a folder written by ``Dataset.save_to_disk``, a folder of audio files (the
``audiofolder`` builder), Parquet files, or a hub id where a hub is reachable. Examples are
streamed one at a time and each one's audio is written once as 16 kHz FLAC (the later stages
read chunks by path), so a 1,000-hour corpus never has to fit in memory, and an interrupted run
skips what it already wrote. Audio is decoded by k2d's own PyAV path, not the dataset's decoder.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

from k2d.audio import decode_audio, write_audio

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _open(spec: str, split: str, audio_column: str):
    from datasets import Audio, DatasetDict, load_dataset, load_from_disk

    path = Path(spec)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        data = load_from_disk(str(path))
        data = data[split] if isinstance(data, DatasetDict) else data
        data = data.to_iterable_dataset()
    elif path.is_dir():
        data = load_dataset("audiofolder", data_dir=str(path), split=split, streaming=True)
    elif path.suffix == ".parquet" or "*" in spec:
        data = load_dataset("parquet", data_files=spec, split=split, streaming=True)
    else:
        data = load_dataset(spec, split=split, streaming=True)  # a hub id
    return data.cast_column(audio_column, Audio(decode=False))


def _samples(audio: dict):
    if audio.get("bytes"):
        return decode_audio(io.BytesIO(audio["bytes"]))
    return decode_audio(audio["path"])


def materialise(spec: str, out_dir: Path, split: str = "train", audio_column: str = "audio", id_column: str | None = None,
                limit: int | None = None) -> Iterator[tuple[str, Path]]:
    """Yield ``(id, flac path)`` per example, writing each file only if it is not there yet."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, example in enumerate(_open(spec, split, audio_column)):
        if limit is not None and index >= limit:
            return
        audio = example[audio_column]
        raw_id = str(example.get(id_column)) if id_column else (Path(audio.get("path") or "").stem or str(index))
        item = f"{index:07d}-{_SAFE.sub('_', raw_id)[:60]}"
        path = out_dir / f"{item}.flac"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp.flac")
            write_audio(tmp, _samples(audio))
            tmp.replace(path)
        yield item, path
