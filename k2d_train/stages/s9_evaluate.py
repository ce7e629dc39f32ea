"""``k2d evaluate`` / ``k2d compare``: transcribe labelled manifests the way the server does, and score.

CTranslate2 models go through ``k2d.transcribe`` — the server's windows, engine, context policy,
loop guard and teacher fallback — so a reported MER is the MER users get. A student's language
defaults to its card's (``zh`` for a zh-en student); a multilingual model with no language given
detects it. transformers checkpoints (a student mid-training) go through the same features and
a greedy decoder. Scores: MER (Mandarin characters + English words), Mandarin CER, English WER,
hypotheses with a repeated-n-gram loop, windows the guard flagged, teacher fallbacks, and time.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from k2d.audio import decode_audio, duration
from k2d.context import ContextPolicy
from k2d.manifest import ManifestRow, read_manifest, write_manifest
from k2d.registry import resolve_model
from k2d.scoring import ErrorCounts, cer_zh_counts, mer_counts, repeated_ngram, strip_timestamps, wer_en_counts
from k2d.served import EngineCache, serve_one
from k2d.transcribe import Transcriber, Transcript
from k2d_train.pipeline.options import EvaluateOptions


@dataclass
class EvaluateSummary:
    rows: int
    audio_seconds: float
    wall_seconds: float
    scores: dict = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rtfx(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0


def served_transcriber(model: str, options: EvaluateOptions, store: Path, cache: EngineCache | None = None) -> Transcriber:
    """A CTranslate2 model exactly as the server runs it, its teacher behind it (one assembly: k2d.served)."""
    return Transcriber(serve_one(model, store, options.policy, options.runtime(), cache))


class HFTranscriber:
    """Greedy decoding of a transformers checkpoint on the served features and context."""

    def __init__(self, path: Path):
        from transformers import WhisperForConditionalGeneration, WhisperTokenizer

        self.model = WhisperForConditionalGeneration.from_pretrained(path).eval()
        self.tokenizer = WhisperTokenizer.from_pretrained(path)
        self.policy = ContextPolicy.of_model(path)

    def __call__(self, audio: np.ndarray, language: str | None) -> Transcript:
        import torch

        from k2d.features import log_mel
        from k2d_train.labels.decoding import detect_language, whisper_prompt
        from k2d_train.training.encoder import encode
        from k2d_train.training.hf_decode import greedy_decode

        with torch.no_grad():
            features = torch.from_numpy(log_mel(audio, self.policy.frames(len(audio)),
                                                num_mel_bins=self.model.config.num_mel_bins))[None]
            hidden, _ = encode(self.model.model.encoder, features)
        language = language or detect_language(self.model, self.tokenizer, hidden)
        prompt = whisper_prompt(self.tokenizer, language)
        ids = greedy_decode(self.model, hidden, prompt, self.tokenizer.convert_tokens_to_ids("<|endoftext|>"))[0]
        return Transcript(strip_timestamps(self.tokenizer.decode(ids, skip_special_tokens=True)))


def transcriber_for(model: str, options: EvaluateOptions, store: Path):
    from k2d.ctc_engine import HEAD_FILE

    path, _ = resolve_model(model, store)
    if (path / "model.bin").exists() or (path / HEAD_FILE).exists():  # CTranslate2, or ONNX CTC / transducer
        return served_transcriber(model, options, store)
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


def _row_language(row: ManifestRow, options: EvaluateOptions) -> str | None:
    return options.language or (row.extra.get("language") if options.use_manifest_language else None)


def transcribe_manifest(model: str, manifest: Path, out: Path | None, options: EvaluateOptions, store: Path,
                        transcriber=None) -> EvaluateSummary:
    """Transcribe every row; score when the manifest has references; write hypotheses if ``out``."""
    transcriber = transcriber or transcriber_for(model, options, store)
    rows = list(read_manifest(manifest))
    hypotheses: list[ManifestRow] = []
    results: list[Transcript] = []
    summary = EvaluateSummary(len(rows), 0.0, 0.0)
    with tqdm(rows, desc=f"evaluate {Path(model).name}", unit="clip") as progress:
        for row in progress:
            audio = decode_audio(row.path(manifest))
            start = time.perf_counter()
            result = transcriber(audio, _row_language(row, options))
            elapsed = time.perf_counter() - start
            summary.wall_seconds += elapsed
            summary.latencies_ms.append(round(elapsed * 1000, 1))
            summary.audio_seconds += duration(audio)
            results.append(result)
            hypotheses.append(ManifestRow(audio=row.audio, text=result.text))
            progress.set_postfix(rtfx=f"{summary.rtfx:.1f}")
    if out is not None:
        write_manifest(out, hypotheses)
    if all(row.text is not None for row in rows):
        summary.scores = score([row.text or "" for row in rows], [h.text or "" for h in hypotheses])
        summary.scores.update(flagged=sum(r.flagged for r in results), fallbacks=sum(r.fallbacks for r in results),
                              trimmed=sum(r.trimmed for r in results),
                              rtfx=round(summary.rtfx, 2), **latency_stats(summary.latencies_ms))
    return summary


def latency_stats(latencies_ms: list[float]) -> dict:
    if not latencies_ms:
        return {}
    return {"latency_ms_mean": round(statistics.fmean(latencies_ms), 1),
            "latency_ms_p50": round(statistics.median(latencies_ms), 1)}


def write_report(summary: EvaluateSummary, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**asdict(summary), "rtfx": summary.rtfx}, indent=2, ensure_ascii=False) + "\n")
