"""``k2d evaluate``: transcribe a manifest with a CTranslate2 model (faster-whisper), temperature 0.

Hypotheses keep the manifest's ``audio`` key so they join back to references by row. Scoring
(MER, CER/WER, repetitions) builds on these rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from k2d.audio import decode_audio, duration
from k2d.manifest import ManifestRow, read_manifest, write_manifest
from k2d.registry import resolve_model


@dataclass
class EvaluateOptions:
    language: str | None = None
    beam_size: int = 5
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 0
    use_manifest_language: bool = True  # a row's "language" wins over detection when --language is unset


@dataclass
class EvaluateSummary:
    rows: int
    audio_seconds: float
    wall_seconds: float

    @property
    def rtfx(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0


def load_whisper(model: str, options: EvaluateOptions, store: Path):
    from faster_whisper import WhisperModel

    path, _ = resolve_model(model, store)
    if not (path / "model.bin").exists():
        raise ValueError(f"{model}: not a CTranslate2 model (export it first: k2d models export {model})")
    return WhisperModel(str(path), device=options.device, compute_type=options.compute_type,
                        cpu_threads=options.cpu_threads)


def transcribe(whisper, audio, language: str | None, beam_size: int) -> str:
    segments, _ = whisper.transcribe(
        audio, language=language, beam_size=beam_size, temperature=0.0, condition_on_previous_text=False
    )
    return "".join(segment.text for segment in segments).strip()


def transcribe_manifest(model: str, manifest: Path, out: Path, options: EvaluateOptions, store: Path) -> EvaluateSummary:
    whisper = load_whisper(model, options, store)
    rows = list(read_manifest(manifest))
    hypotheses: list[ManifestRow] = []
    audio_seconds = 0.0
    start = time.perf_counter()
    with tqdm(rows, desc=f"evaluate {model}", unit="clip") as progress:
        for row in progress:
            audio = decode_audio(row.path(manifest))
            audio_seconds += duration(audio)
            language = options.language or (row.extra.get("language") if options.use_manifest_language else None)
            text = transcribe(whisper, audio, language, options.beam_size)
            hypotheses.append(ManifestRow(audio=row.audio, text=text))
            elapsed = time.perf_counter() - start
            progress.set_postfix(rtfx=f"{audio_seconds / elapsed:.1f}")
    write_manifest(out, hypotheses)
    return EvaluateSummary(len(hypotheses), audio_seconds, time.perf_counter() - start)
