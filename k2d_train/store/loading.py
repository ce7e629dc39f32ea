"""Load a registered CTranslate2 model for the training stages (teacher, validator)."""

from __future__ import annotations

from pathlib import Path

from k2d.registry import resolve_model


def ct2_dir(model: str, store: Path) -> Path:
    path, _ = resolve_model(model, store)
    if not (path / "model.bin").exists():
        raise ValueError(f"{model}: not a CTranslate2 model (export it first: k2d models export {model})")
    return path


def load_whisper(model: str, store: Path, device: str = "cpu", compute_type: str = "int8", cpu_threads: int = 0):
    """faster-whisper's WhisperModel (its batched long-form pipeline labels the lectures)."""
    from faster_whisper import WhisperModel

    return WhisperModel(str(ct2_dir(model, store)), device=device, compute_type=compute_type, cpu_threads=cpu_threads)
