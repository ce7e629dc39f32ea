"""``k2d evaluate``: transcribe a manifest (temperature 0) and score it against its references.

CTranslate2 models go through faster-whisper, exactly as the server runs them; transformers
checkpoints (e.g. a student mid-training) go through the same features and a greedy decoder.
Scores: MER (Mandarin characters + English words), Mandarin CER, English WER, the number of
hypotheses with a repeated-n-gram loop, and RTFx (audio seconds per wall second).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from k2d.audio import decode_audio, duration
from k2d.manifest import ManifestRow, read_manifest, write_manifest
from k2d.registry import resolve_model
from k2d_train.text import ErrorCounts, cer_zh_counts, mer_counts, repeated_ngram, strip_timestamps, wer_en_counts


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
    scores: dict = field(default_factory=dict)

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


class CT2Transcriber:
    def __init__(self, model: str, options: EvaluateOptions, store: Path):
        self.whisper, self.options = load_whisper(model, options, store), options

    def __call__(self, audio: np.ndarray, language: str | None) -> str:
        segments, _ = self.whisper.transcribe(audio, language=language, beam_size=self.options.beam_size,
                                              temperature=0.0, condition_on_previous_text=False)
        return "".join(segment.text for segment in segments).strip()


class HFTranscriber:
    """Greedy decoding of a transformers checkpoint on faster-whisper's features."""

    def __init__(self, path: Path):
        from transformers import WhisperForConditionalGeneration, WhisperTokenizer

        self.model = WhisperForConditionalGeneration.from_pretrained(path).eval()
        self.tokenizer = WhisperTokenizer.from_pretrained(path)

    def __call__(self, audio: np.ndarray, language: str | None) -> str:
        import torch

        from k2d_train.decoding import whisper_prompt
        from k2d_train.features import whisper_features
        from k2d_train.hf_decode import greedy_decode

        prompt = whisper_prompt(self.tokenizer, language)
        with torch.no_grad():
            features = torch.from_numpy(whisper_features(audio, num_mel_bins=self.model.config.num_mel_bins))[None]
            hidden = self.model.model.encoder(features).last_hidden_state
        ids = greedy_decode(self.model, hidden, prompt, self.tokenizer.convert_tokens_to_ids("<|endoftext|>"))[0]
        return strip_timestamps(self.tokenizer.decode(ids, skip_special_tokens=True))


def transcriber_for(model: str, options: EvaluateOptions, store: Path):
    path, entry = resolve_model(model, store)
    if (path / "model.bin").exists():
        return CT2Transcriber(model, options, store)
    if (path / "config.json").exists():
        return HFTranscriber(path)
    raise ValueError(f"{model}: neither a CTranslate2 nor a transformers model directory")


def score(references: list[str], hypotheses: list[str]) -> dict:
    totals = {"mer": ErrorCounts(), "cer_zh": ErrorCounts(), "wer_en": ErrorCounts()}
    for ref, hyp in zip(references, hypotheses, strict=True):
        totals["mer"] += mer_counts(ref, hyp)
        totals["cer_zh"] += cer_zh_counts(ref, hyp)
        totals["wer_en"] += wer_en_counts(ref, hyp)
    out = {name: round(counts.rate, 4) for name, counts in totals.items()}
    out["repetitions"] = sum(repeated_ngram(h) for h in hypotheses)
    out["utterances"] = len(hypotheses)
    return out


def transcribe_manifest(model: str, manifest: Path, out: Path | None, options: EvaluateOptions, store: Path,
                        transcriber=None) -> EvaluateSummary:
    """Transcribe every row; score when the manifest has references; write hypotheses if ``out``."""
    transcriber = transcriber or transcriber_for(model, options, store)
    rows = list(read_manifest(manifest))
    hypotheses: list[ManifestRow] = []
    audio_seconds = wall = 0.0
    with tqdm(rows, desc=f"evaluate {model}", unit="clip") as progress:
        for row in progress:
            audio = decode_audio(row.path(manifest))
            language = options.language or (row.extra.get("language") if options.use_manifest_language else None)
            start = time.perf_counter()
            text = transcriber(audio, language)
            wall += time.perf_counter() - start
            audio_seconds += duration(audio)
            hypotheses.append(ManifestRow(audio=row.audio, text=text))
            progress.set_postfix(rtfx=f"{audio_seconds / max(wall, 1e-9):.1f}")
    if out is not None:
        write_manifest(out, hypotheses)
    summary = EvaluateSummary(len(hypotheses), audio_seconds, wall)
    if all(row.text is not None for row in rows):
        summary.scores = score([row.text or "" for row in rows], [h.text or "" for h in hypotheses])
        summary.scores["rtfx"] = round(summary.rtfx, 2)
    return summary


def write_report(summary: EvaluateSummary, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**asdict(summary), "rtfx": summary.rtfx}, indent=2, ensure_ascii=False) + "\n")
