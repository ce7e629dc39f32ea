"""One CTranslate2 Whisper model: a batch of ≤ 30 s windows in, timestamped segments out.

The batch may mix windows of different requests; everything that must be equal inside one
``generate`` call (task, beam size, temperature, timestamps on/off) is the batch key built by
the scheduler. Language may differ per window: each window gets its own prompt. CTranslate2
releases the GIL, so several worker threads run batches truly in parallel (on GPUs: one
replica per device index and ``inter_threads``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_FRAMES = 3000
TIME_PER_TIMESTAMP = 0.02
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0


@dataclass(frozen=True)
class DecodeOptions:
    """What a batch must share; ``language`` is per window and is not part of the key."""

    task: str = "transcribe"
    beam_size: int = 5
    temperature: float = 0.0
    timestamps: bool = True

    def key(self) -> tuple:
        return (self.task, self.beam_size, round(self.temperature, 3), self.timestamps)


@dataclass
class Segment:
    start: float
    end: float
    text: str
    tokens: list[int]


@dataclass
class WindowResult:
    language: str
    segments: list[Segment]
    tokens: int


class WhisperEngine:
    def __init__(self, path: Path, device: str, device_index: list[int], compute_type: str,
                 replicas: int = 1, cpu_threads: int = 0):
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor
        from tokenizers import Tokenizer

        self.model = ctranslate2.models.Whisper(
            str(path), device=device, device_index=device_index, compute_type=compute_type,
            inter_threads=replicas, intra_threads=cpu_threads,
        )
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        preprocessor = path / "preprocessor_config.json"
        mels = json.loads(preprocessor.read_text()).get("feature_size", 80) if preprocessor.exists() else 80
        self.features = FeatureExtractor(feature_size=mels)
        self.id = {t: self.tokenizer.token_to_id(t) for t in
                   ("<|startoftranscript|>", "<|transcribe|>", "<|translate|>", "<|notimestamps|>", "<|endoftext|>")}
        self.timestamp_begin = self.id["<|notimestamps|>"] + 1
        self.multilingual = self.model.is_multilingual
        self.workers = max(1, len(device_index)) * replicas

    def _features(self, windows: list[np.ndarray]) -> np.ndarray:
        from faster_whisper.audio import pad_or_trim

        return np.stack([pad_or_trim(self.features(w)) for w in windows]).astype(np.float32)

    def detect_languages(self, storage) -> list[str]:
        if not self.multilingual:
            return ["en"] * storage.shape[0]
        return [ranked[0][0].strip("<|>") for ranked in self.model.detect_language(storage)]

    def _prompt(self, language: str, options: DecodeOptions) -> list[int]:
        prompt = [self.id["<|startoftranscript|>"]]
        if self.multilingual:
            prompt += [self.tokenizer.token_to_id(f"<|{language}|>"), self.id[f"<|{options.task}|>"]]
        if not options.timestamps:
            prompt.append(self.id["<|notimestamps|>"])
        return prompt

    def transcribe_batch(self, windows: list[np.ndarray], languages: list[str | None],
                         options: DecodeOptions) -> list[WindowResult]:
        import ctranslate2

        storage = ctranslate2.StorageView.from_array(self._features(windows))
        if any(lang is None for lang in languages):
            storage = self.model.encode(storage, to_cpu=False)
            detected = self.detect_languages(storage)
            languages = [lang or found for lang, found in zip(languages, detected, strict=True)]
        for lang in languages:
            if self.multilingual and self.tokenizer.token_to_id(f"<|{lang}|>") is None:
                raise ValueError(f"unknown language {lang!r}")
        results = self.model.generate(
            storage, [self._prompt(lang, options) for lang in languages], beam_size=options.beam_size,
            sampling_temperature=max(options.temperature, 1e-6) if options.temperature > 0 else 1.0,
            sampling_topk=0 if options.temperature > 0 else 1, max_length=448, suppress_blank=True,
            return_scores=True, return_no_speech_prob=True,
        )
        out = []
        for window, lang, result in zip(windows, languages, results, strict=True):
            ids = result.sequences_ids[0]
            avg_logprob = result.scores[0] if ids else 0.0
            # Whisper's own rule: likely no speech and a low-confidence transcript -> nothing
            silent = result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD
            out.append(WindowResult(lang, [] if silent else self.segments(ids, len(window) / 16000), len(ids)))
        return out

    def segments(self, ids: list[int], window_s: float) -> list[Segment]:
        """Split generated ids at timestamp tokens; text without timestamps is one segment."""
        segments: list[Segment] = []
        start, text_ids = 0.0, []
        for token in ids:
            if token >= self.timestamp_begin:
                time = (token - self.timestamp_begin) * TIME_PER_TIMESTAMP
                if text_ids:
                    segments.append(Segment(start, min(time, window_s), self._text(text_ids), text_ids))
                    text_ids = []
                start = time
            elif token < self.id["<|endoftext|>"]:
                text_ids.append(token)
        if text_ids:
            segments.append(Segment(start, window_s, self._text(text_ids), text_ids))
        return [s for s in segments if s.text]

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids).strip()
