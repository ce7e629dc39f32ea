"""One CTranslate2 Whisper model: a batch of ≤ 30 s windows in, timestamped segments out.

The batch may mix windows of different requests; everything that must be equal inside one
``generate`` call (task, beam size, temperature, timestamps on/off) is the batch key built by
the scheduler. Language may differ per window: each window gets its own prompt. CTranslate2
releases the GIL, so several worker threads run batches truly in parallel (on GPUs: one
replica per device index and ``inter_threads``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

TIME_PER_TIMESTAMP = 0.02
HOP_LENGTH = 160  # samples per mel frame
FRAMES_PER_SECOND = 50  # encoder frames (two mel frames each)
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0


@dataclass(frozen=True)
class DecodeOptions:
    """What a batch must share; ``language`` is per window and is not part of the key."""

    task: str = "transcribe"
    beam_size: int = 5
    temperature: float = 0.0
    timestamps: bool = True
    word_timestamps: bool = False

    def key(self) -> tuple:
        return (self.task, self.beam_size, round(self.temperature, 3), self.timestamps, self.word_timestamps)


@dataclass
class Segment:
    start: float
    end: float
    text: str
    tokens: list[int]
    words: list[dict] | None = None


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

        features = self._features(windows)
        storage = ctranslate2.StorageView.from_array(features)
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
        if options.word_timestamps:
            for i, (window, lang) in enumerate(zip(windows, languages, strict=True)):
                self.word_timings(features[i : i + 1], self._prompt(lang, replace(options, timestamps=True)),
                                  out[i].segments, len(window) // HOP_LENGTH)
        return out

    def word_timings(self, features: np.ndarray, prompt: list[int], segments: list[Segment], num_frames: int) -> None:
        """Word start/end from cross-attention alignment (the model's alignment heads, DTW in CTranslate2)."""
        import ctranslate2

        tokens = [t for seg in segments for t in seg.tokens]
        if not tokens:
            return
        result = self.model.align(ctranslate2.StorageView.from_array(features), prompt,
                                  [tokens + [self.id["<|endoftext|>"]]], num_frames)[0]
        text_index, time_index = (np.array(column) for column in zip(*result.alignments, strict=True))
        jumps = np.pad(np.diff(text_index), (1, 0), constant_values=1).astype(bool)
        times = time_index[jumps] / FRAMES_PER_SECOND  # one start time per text token (and the final <|endoftext|>)
        probs = result.text_token_probs
        offset = 0
        for seg in segments:
            seg.words = []
            for word, count in self._words(seg.tokens):
                last = min(offset + count, len(times) - 1)
                seg.words.append({"word": word, "start": round(float(times[min(offset, last)]), 2),
                                  "end": round(float(times[last]), 2),
                                  "probability": round(float(np.mean(probs[offset : offset + count])), 3)})
                offset += count

    def _pieces(self, tokens: list[int]) -> list[tuple[str, int]]:
        """Decodable pieces: byte-level BPE splits one CJK character over several tokens."""
        pieces, group = [], []
        for token in tokens:
            group.append(token)
            text = self.tokenizer.decode(group)
            if "\ufffd" not in text:
                pieces.append((text, len(group)))
                group = []
        if group:
            pieces.append((self.tokenizer.decode(group), len(group)))
        return pieces

    def _words(self, tokens: list[int]) -> list[tuple[str, int]]:
        """Group tokens into words: a leading space starts a word; every CJK character is a word."""
        words: list[list] = []
        for piece, count in self._pieces(tokens):
            cjk = any("\u3400" <= ch <= "\u9fff" for ch in piece)
            if not words or piece.startswith(" ") or cjk or words[-1][2]:
                words.append([piece, count, cjk])
            else:
                words[-1][0] += piece
                words[-1][1] += count
        return [(text.strip(), count) for text, count, _ in words if text.strip()] or []

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
