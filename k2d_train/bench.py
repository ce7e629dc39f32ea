"""Speed measurements of teacher versus student, always side by side in one process.

Two views: *end to end* (the same audio through faster-whisper, the two models interleaved clip by
clip so machine drift hits both alike) and *forced length* (encoder time, and decoder time for
exactly N generated tokens with ``<|endoftext|>`` suppressed — the view that isolates what a
shallower decoder buys, independent of how long each model's transcripts happen to be).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from k2d.audio import decode_audio, duration
from k2d.manifest import read_manifest
from k2d_train.decoding import whisper_prompt


@dataclass
class ForcedTiming:
    encode_s: float
    decode_s: float
    tokens: int


def interleaved_forced_timings(models: dict, batch_size: int, tokens: int, repeats: int = 5) -> dict[str, ForcedTiming]:
    """Each model timed ``repeats`` times, alternating models every repeat; medians per model.

    CTranslate2's Whisper ``generate(max_length=N)`` yields at most N//2 new tokens, hence 2N;
    the generated count is checked rather than assumed. One untimed warm-up run per model first.
    """
    runs = {name: _forced_runner(whisper, batch_size, tokens) for name, whisper in models.items()}
    for runner in runs.values():
        runner()
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in models}
    for r in range(repeats):
        for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            samples[name].append(runs[name]())
    return {name: ForcedTiming(statistics.median(s[0] for s in got), statistics.median(s[1] for s in got),
                               min(s[2] for s in got)) for name, got in samples.items()}


def _forced_runner(whisper, batch_size: int, tokens: int):
    import ctranslate2

    model = whisper.model
    rng = np.random.default_rng(0)
    mels = whisper.feature_extractor.mel_filters.shape[0]
    features = rng.standard_normal((batch_size, mels, 3000)).astype(np.float32)
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


def model_pairs(names: list[str], registry, say=print) -> dict[str, tuple[Path, Path]]:
    """(teacher dir, student dir) per pair name: ``base`` = the store's real pair, else a random shape."""
    from k2d_train.random_models import SHAPES, write_random_model

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
            pairs[name] = (write_random_model(template, folder / f"{shape.name}-{shape.encoder_layers}x{shape.decoder_layers}",
                                              shape, shape.decoder_layers),
                           write_random_model(template, folder / f"{shape.name}-{shape.encoder_layers}x2", shape, 2))
        else:
            raise ValueError(f"unknown pair {name!r}; use base or one of {', '.join(SHAPES)}")
    return pairs


def speed_benchmark(pairs: dict[str, tuple[Path, Path]], batches: list[int], compute_types: list[str], device: str,
                    tokens: int, repeats: int, threads: int = 0, say=print) -> list[dict]:
    """Forced-length encode/decode medians, teacher and student interleaved, for every combination."""
    from faster_whisper import WhisperModel

    rows = []
    for pair, (teacher_dir, student_dir) in pairs.items():
        for compute_type in compute_types:
            models = {role: WhisperModel(str(path), device=device, compute_type=compute_type, cpu_threads=threads)
                      for role, path in (("teacher", teacher_dir), ("student", student_dir))}
            for batch in batches:
                timing = interleaved_forced_timings(models, batch, tokens, repeats)
                t, s = timing["teacher"], timing["student"]
                row = {"pair": pair, "compute_type": compute_type, "device": device, "batch": batch,
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
             "| pair | compute | batch | tokens | encode s T / S | decode s T / S | decode ratio | total ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['compute_type']} | {r['batch']} | {r['tokens']} | "
                     f"{r['teacher_encode_s']:.3f} / {r['student_encode_s']:.3f} | "
                     f"{r['teacher_decode_s']:.3f} / {r['student_decode_s']:.3f} | {r['decode_ratio']:.2f}× | "
                     f"{r['total_ratio']:.2f}× |")
    return "\n".join(lines) + "\n"
