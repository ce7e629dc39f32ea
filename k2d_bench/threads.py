"""How a CPU worker should spend its threads: encoder and decoder threads, one model, same utterances.

Each variant is a ``WhisperEngine`` as the server builds it (``K2D_CPU_THREADS`` for the encoder,
``K2D_CPU_DECODE_THREADS`` for a second instance that decodes); the guard is off so every variant
does the same work (one beam search per utterance, no sampling). Variants are interleaved utterance by
utterance, and the transcripts are compared: the threads must change the time, never the text.

    k2d bench threads --model teacher=whisper-base-int8 --model student=k2d-student \
        --manifest runs/demo/corpus/dev.jsonl --variant 2/0 --variant 1/0 --variant 2/1 \
        --out docs/benchmarks/cpu-threads/README.md

A variant ``E/D``: E encoder threads (0: CTranslate2's default), D decoder threads (0: the encoder's
instance). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from k2d.audio import decode_audio
from k2d.engine import DecodeOptions, WhisperEngine
from k2d.guard import GuardOptions
from k2d.manifest import read_manifest
from k2d.registry import resolve_model
from k2d_bench import command_line


def engines(model: str, store: Path | None, variants: list[str]) -> dict[str, WhisperEngine]:
    path, entry = resolve_model(model, store)
    penalty = entry.repetition_penalty if entry else None
    built = {}
    for variant in variants:
        encode, decode = (int(n) for n in variant.split("/"))
        built[variant] = WhisperEngine(path, "cpu", [0], "int8", cpu_threads=encode, decode_threads=decode,
                                       guard=GuardOptions(enabled=False), repetition=penalty)
    return built


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="LABEL=registered name or CT2 folder")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--variant", action="append", required=True, help="ENCODER/DECODER threads, e.g. 2/1")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--language", default="zh")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    models = {label: engines(name, args.store, args.variant)
              for label, _, name in (spec.partition("=") for spec in args.model)}
    rows = list(read_manifest(args.manifest))
    ms = {(label, v): [] for label in models for v in args.variant}
    texts = {key: [] for key in ms}
    options = DecodeOptions(beam_size=args.beam_size)
    for i, row in enumerate(rows):
        window = decode_audio(row.path(args.manifest))[: 30 * 16000]
        order = list(ms) if i % 2 == 0 else list(reversed(ms))
        for label, variant in order:
            start = time.perf_counter()
            (result,) = models[label][variant].transcribe_batch([window], [args.language], options)
            ms[(label, variant)].append((time.perf_counter() - start) * 1000)
            texts[(label, variant)].append(result.text)
    lines = [f"`{command_line()}` ({len(rows)} utterances, beam {args.beam_size}, guard off)", "",
             "| model | encoder / decoder threads | p50 ms | mean ms | same transcripts as the first variant |",
             "|---|---|---|---|---|"]
    for label, variant in ms:
        same = sum(a == b for a, b in zip(texts[(label, variant)], texts[(label, args.variant[0])], strict=True))
        lines.append(f"| {label} | {variant} | {statistics.median(ms[(label, variant)]):.0f} | "
                     f"{statistics.fmean(ms[(label, variant)]):.0f} | {same}/{len(rows)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
