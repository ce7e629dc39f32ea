"""Speed measurements of teacher versus student, always side by side in one process.

*Forced length*: encoder time (at the student's context), and decoder time for exactly N
generated tokens with ``<|endoftext|>`` suppressed — the view that isolates what a shallower
decoder and a shorter encoder input buy, independent of how long each model's transcripts
happen to be. End-to-end comparisons through the serving path are ``k2d_train.experiments.compare``.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from k2d.context import FULL_FRAMES, mel_frames
from k2d_train.labels.decoding import whisper_prompt


@dataclass
class ForcedTiming:
    encode_s: float
    decode_s: float
    tokens: int


def interleaved_forced_timings(models: dict, batch_size: int, tokens: int, repeats: int = 5,
                               frames: dict[str, int] | None = None) -> dict[str, ForcedTiming]:
    """Each model timed ``repeats`` times, alternating models every repeat; medians per model.

    CTranslate2's Whisper ``generate(max_length=N)`` yields at most N//2 new tokens, hence 2N;
    the generated count is checked rather than assumed. One untimed warm-up run per model first.
    """
    frames = frames or {}
    runs = {name: _forced_runner(whisper, batch_size, tokens, frames.get(name, 3000)) for name, whisper in models.items()}
    for runner in runs.values():
        runner()
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in models}
    for r in range(repeats):
        for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            samples[name].append(runs[name]())
    return {name: ForcedTiming(statistics.median(s[0] for s in got), statistics.median(s[1] for s in got),
                               min(s[2] for s in got)) for name, got in samples.items()}


def _forced_runner(whisper, batch_size: int, tokens: int, frames: int = 3000):
    import ctranslate2

    model = whisper.model
    rng = np.random.default_rng(0)
    mels = whisper.feature_extractor.mel_filters.shape[0]
    features = rng.standard_normal((batch_size, mels, frames)).astype(np.float32)
    storage = ctranslate2.StorageView.from_array(features)
    eot = whisper.hf_tokenizer.token_to_id("<|endoftext|>")
    prompt = whisper_prompt(whisper.hf_tokenizer, "en", timestamps=False)

    def once() -> tuple[float, float, int]:
        start = time.perf_counter()
        encoded = model.encode(storage, to_cpu=False)
        middle = time.perf_counter()
        result = model.generate(encoded, [prompt] * batch_size, beam_size=1, max_length=2 * tokens,
                                suppress_tokens=[eot], suppress_blank=False)
        end = time.perf_counter()
        return middle - start, end - middle, min(len(r.sequences_ids[0]) for r in result)

    return once


def model_pairs(names: list[str], registry, say=print, student_encoder_layers: int | None = None) -> dict[str, tuple[Path, Path]]:
    """(teacher dir, student dir) per pair name: ``base`` = the store's real pair, else a random shape."""
    from k2d_bench.random_models import SHAPES, write_random_model

    pairs = {}
    for name in names:
        if name == "base":
            students = [e for e in registry.by_role("student") if e.resolve(registry.store).is_dir()]
            if not students:
                raise ValueError("no student in the store: run `k2d run configs/demo.yaml` first")
            student = students[-1]
            teacher = next((t for t in (f"whisper-base-{student.quantization}", "whisper-base") if t in registry), None)
            pairs[name] = (registry.path_of(teacher), registry.path_of(student.name))
        elif name in SHAPES:
            shape, folder = SHAPES[name], registry.store / ".bench"
            say(f"writing random-weight {shape.name} models (speed only) under {folder}")
            template = registry.path_of("whisper-base")
            small = replace(shape, encoder_layers=student_encoder_layers or shape.encoder_layers)
            pairs[name] = (write_random_model(template, folder / f"{shape.name}-{shape.encoder_layers}x{shape.decoder_layers}",
                                              shape, shape.decoder_layers),
                           write_random_model(template, folder / f"{shape.name}-{small.encoder_layers}x2", small, 2))
        else:
            raise ValueError(f"unknown pair {name!r}; use base or one of {', '.join(SHAPES)}")
    return pairs


def speed_benchmark(pairs: dict[str, tuple[Path, Path]], batches: list[int], compute_types: list[str], device: str,
                    tokens: int, repeats: int, threads: int = 0, say=print, contexts: list[float] = (0.0,)) -> list[dict]:
    """Forced-length encode/decode medians, teacher and student interleaved, for every combination.

    ``contexts``: the student encoder's input in seconds (0: Whisper's 30 s); the teacher always gets 30 s."""
    from faster_whisper import WhisperModel

    rows = []
    for pair, (teacher_dir, student_dir) in pairs.items():
        for compute_type in compute_types:
            models = {role: WhisperModel(str(path), device=device, compute_type=compute_type, cpu_threads=threads)
                      for role, path in (("teacher", teacher_dir), ("student", student_dir))}
            for batch, context in [(b, c) for b in batches for c in contexts]:
                frames = {"student": mel_frames(context) if context else FULL_FRAMES}
                timing = interleaved_forced_timings(models, batch, tokens, repeats, frames)
                t, s = timing["teacher"], timing["student"]
                row = {"pair": pair, "compute_type": compute_type, "device": device, "batch": batch,
                       "student_context_s": context or 30.0,
                       "tokens": min(t.tokens, s.tokens), "teacher_encode_s": round(t.encode_s, 4),
                       "student_encode_s": round(s.encode_s, 4), "teacher_decode_s": round(t.decode_s, 4),
                       "student_decode_s": round(s.decode_s, 4), "decode_ratio": round(t.decode_s / s.decode_s, 3),
                       "total_ratio": round((t.encode_s + t.decode_s) / (s.encode_s + s.decode_s), 3)}
                say(json.dumps(row))
                rows.append(row)
            del models
    return rows


def speed_markdown(rows: list[dict], command: str, hardware: str) -> str:
    lines = ["# Engine speed: teacher vs student (forced-length decoding)", "", f"{hardware}; `{command}`", "",
             "| pair | compute | batch | student context s | tokens | encode s T / S | decode s T / S | decode ratio | "
             "total ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['compute_type']} | {r['batch']} | {r.get('student_context_s', 30.0):g} | "
                     f"{r['tokens']} | "
                     f"{r['teacher_encode_s']:.3f} / {r['student_encode_s']:.3f} | "
                     f"{r['teacher_decode_s']:.3f} / {r['student_decode_s']:.3f} | {r['decode_ratio']:.2f}× | "
                     f"{r['total_ratio']:.2f}× |")
    return "\n".join(lines) + "\n"
