"""Speed measurements of teacher versus student, always side by side in one process.

Two views: *end to end* (the same audio through faster-whisper, the two models interleaved clip by
clip so machine drift hits both alike) and *forced length* (encoder time, and decoder time for
exactly N generated tokens with ``<|endoftext|>`` suppressed — the view that isolates what a
shallower decoder buys, independent of how long each model's transcripts happen to be).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from k2d.audio import decode_audio, duration
from k2d.manifest import read_manifest


@dataclass
class ForcedTiming:
    encode_s: float
    decode_s: float
    tokens: int


def forced_length_timing(whisper, batch_size: int, tokens: int, repeats: int = 5) -> ForcedTiming:
    """Median encode and decode seconds for a batch of 30 s windows and ``tokens`` new tokens each.

    CTranslate2's Whisper ``generate(max_length=N)`` yields at most N//2 new tokens, hence 2N;
    the generated count is checked rather than assumed.
    """
    import ctranslate2

    model = whisper.model
    rng = np.random.default_rng(0)
    features = rng.standard_normal((batch_size, whisper.feature_extractor.feature_size, 3000)).astype(np.float32)
    storage = ctranslate2.StorageView.from_array(features)
    eot = whisper.hf_tokenizer.token_to_id("<|endoftext|>")
    prompt = [whisper.hf_tokenizer.token_to_id(t) for t in ("<|startoftranscript|>", "<|notimestamps|>")]
    if model.is_multilingual:
        prompt = [prompt[0], whisper.hf_tokenizer.token_to_id("<|en|>"),
                  whisper.hf_tokenizer.token_to_id("<|transcribe|>"), prompt[1]]
    encode_times, decode_times, generated = [], [], 0
    for _ in range(repeats + 1):  # the first round warms up and is discarded
        start = time.perf_counter()
        encoded = model.encode(storage, to_cpu=False)
        middle = time.perf_counter()
        result = model.generate(encoded, [prompt] * batch_size, beam_size=1, max_length=2 * tokens,
                                suppress_tokens=[eot], suppress_blank=False)
        end = time.perf_counter()
        encode_times.append(middle - start)
        decode_times.append(end - middle)
        generated = min(len(r.sequences_ids[0]) for r in result)
    return ForcedTiming(statistics.median(encode_times[1:]), statistics.median(decode_times[1:]), generated)


@dataclass
class EndToEnd:
    audio_seconds: float
    teacher_seconds: float
    student_seconds: float
    texts: dict[str, list[str]]

    @property
    def speedup(self) -> float:
        return self.teacher_seconds / self.student_seconds if self.student_seconds else 0.0


def end_to_end(teacher, student, manifest: Path, language: str | None, beam_size: int, rounds: int = 1) -> EndToEnd:
    """Wall time of both faster-whisper models on the same clips, alternating which goes first."""
    rows = list(read_manifest(manifest))
    clips = [decode_audio(row.path(manifest)) for row in rows]
    totals = {"teacher": 0.0, "student": 0.0}
    texts: dict[str, list[str]] = {"teacher": [], "student": []}
    models = {"teacher": teacher, "student": student}
    for round_index in range(rounds):
        for i, (row, audio) in enumerate(tqdm(list(zip(rows, clips, strict=True)), desc="teacher vs student")):
            order = ("teacher", "student") if (i + round_index) % 2 == 0 else ("student", "teacher")
            for name in order:
                start = time.perf_counter()
                segments, _ = models[name].transcribe(audio, language=language or row.extra.get("language"),
                                                      beam_size=beam_size, temperature=0.0,
                                                      condition_on_previous_text=False)
                text = "".join(s.text for s in segments).strip()
                totals[name] += time.perf_counter() - start
                if round_index == 0:
                    texts[name].append(text)
    return EndToEnd(rounds * sum(duration(c) for c in clips), totals["teacher"], totals["student"], texts)
