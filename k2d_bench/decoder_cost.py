"""Where a Whisper decoder's time goes: per-token cost of decoders that differ only in depth.

Same audio, same encoder-output length, same beam, and the same number of generated tokens for every
model (end-of-text suppressed), models interleaved call by call, so the only difference is the number
of decoder layers. A straight line through (layers, ms per token) splits a decoding step into what
every layer adds and what does not shrink with depth (token embedding, the 51,865-way output
projection and softmax per beam, beam search). That split says which lever is left once a student
keeps few layers.

    k2d bench decoder-cost --model teacher=whisper-base-int8 --model d4=k2d-student \
        --model d2=<2-layer student> --store models --out docs/benchmarks/decoder-cost-cpu/result.md

A measurement, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from k2d.audio import decode_audio
from k2d.engine import GENERATE_LENGTH_FACTOR, DecodeOptions, WhisperEngine
from k2d.features import log_mel
from k2d.registry import resolve_model
from k2d_bench import command_line, report
from k2d_train.store.ct2_format import read_model_bin
from k2d_train.store.ct2_to_hf import whisper_shape


def load(path: Path, audio: np.ndarray, frames: int, threads: int) -> tuple[WhisperEngine, object, list[int]]:
    """The model as the server loads it, its encoder output for ``audio``, and the zh transcribe prompt."""
    import ctranslate2

    engine = WhisperEngine(path, "cpu", [0], "int8", cpu_threads=threads)
    encoded = engine.model.encode(ctranslate2.StorageView.from_array(log_mel(audio, frames, num_mel_bins=engine.mels)[None]))
    return engine, encoded, engine._prompt("zh", DecodeOptions(timestamps=False))


def timed_generate(loaded, beam: int, tokens: int) -> tuple[float, int]:
    """(ms, tokens generated) for one forced-length decode."""
    engine, encoded, prompt = loaded
    start = time.perf_counter()
    (result,) = engine.model.generate(encoded, [prompt], beam_size=beam, max_length=GENERATE_LENGTH_FACTOR * tokens,
                                      suppress_tokens=[-1, engine.id["<|endoftext|>"]], suppress_blank=False)
    return (time.perf_counter() - start) * 1000, len(result.sequences_ids[0])


def decoder_layers(path: Path) -> int:
    """Decoder depth of a CTranslate2 Whisper folder (its config does not record it)."""
    return whisper_shape(read_model_bin(path / "model.bin"))["decoder_layers"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="LABEL=registered name or CT2 folder")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--audio", type=Path, default=Path("tests/data/zh_lecture.flac"))
    parser.add_argument("--seconds", type=float, default=8.0, help="encoder input for every model (a short context)")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    audio = decode_audio(args.audio)[: int(args.seconds * 16000)]
    frames = int(args.seconds * 100)
    models = []
    for spec in args.model:
        label, _, name = spec.partition("=")
        path, _ = resolve_model(name, args.store)
        models.append((label, decoder_layers(path), load(path, audio, frames, args.threads)))
    times: dict[str, list[float]] = {label: [] for label, _, _ in models}
    generated: dict[str, int] = {}
    for repeat in range(args.repeats + 1):  # interleaved, so drift hits every model alike; round 0 warms up
        for label, _, loaded in models if repeat % 2 == 0 else reversed(models):
            ms, count = timed_generate(loaded, args.beam_size, args.tokens)
            generated[label] = count
            if repeat:
                times[label].append(ms / max(1, count))
    rows = [(label, layers, statistics.median(times[label]), generated[label]) for label, layers, _ in models]
    for label, layers, ms, count in rows:
        print(f"{label:<14} {layers} decoder layers  {ms:.2f} ms/token  ({count} tokens)", flush=True)
    slope, intercept = np.polyfit([r[1] for r in rows], [r[2] for r in rows], 1)
    command = command_line()
    lines = [f"`{command}`", "",
             "| model | decoder layers | ms per token (median of "
             f"{args.repeats}) | tokens |", "|---|---|---|---|"]
    lines += [f"| {label} | {layers} | {ms:.2f} | {count} |" for label, layers, ms, count in rows]
    lines += ["", f"Fit: {intercept:.2f} ms per token whatever the depth + {slope:.2f} ms per decoder layer; "
              f"a 2-layer decoder spends {intercept / (intercept + 2 * slope):.0%} of each step outside its layers."]
    report(lines, args.out)


if __name__ == "__main__":
    main()
