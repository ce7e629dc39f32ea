"""Serving benchmark (a measurement, not a test): what cross-request batching buys, what the service costs.

1. The same model behind the real server twice — batching on (``max_batch_size`` 8) and off (1) —
   load-tested at concurrency 1 and 16 over loopback: requests/s and latency.
2. The service's overhead: the same clips through the engine directly (decode, VAD windows,
   one ``generate`` per clip, no HTTP, no queue) versus the server at concurrency 1.

    k2d bench serving [--model NAME] [--requests 32] [--out docs/benchmarks/serving-cpu]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from k2d.audio import decode_audio
from k2d.engine import DecodeOptions, WhisperEngine
from k2d.manifest import read_manifest
from k2d.registry import Registry, default_store
from k2d.windows import split
from k2d_bench import command_line
from loadtest.__main__ import hardware, run
from loadtest.harness import REPO, serving

MANIFEST = REPO / "tests" / "data" / "manifest.jsonl"


def speech_manifest(folder: Path) -> Path:
    """The test clips minus the silent one (nothing to decode there)."""
    rows = [r for r in read_manifest(MANIFEST) if r.text]
    out = folder / "speech.jsonl"
    out.write_text("".join(json.dumps({"audio": str(r.path(MANIFEST)), "text": r.text}) + "\n" for r in rows))
    return out


def direct_latencies(path: Path, manifest: Path, threads: int) -> list[float]:
    engine = WhisperEngine(path, "cpu", [0], "int8", 1, threads)
    clips = [Path(r.audio).read_bytes() for r in read_manifest(manifest)]
    out = []
    for _ in range(3):
        for data in clips:
            start = time.perf_counter()
            windows = split(decode_audio(io.BytesIO(data), 600.0), vad=True)
            engine.transcribe_batch([w.audio for w in windows], [None] * len(windows), DecodeOptions())
            out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="served model [default: the newest student, else whisper-base]")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "serving-cpu")
    args = parser.parse_args(argv)
    registry = Registry(default_store())
    students = registry.by_role("student")
    model = args.model or (students[-1].name if students else "whisper-base")
    results = {"model": model, "hardware": hardware(), "requests_per_level": args.requests}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = speech_manifest(Path(tmp))
        for label, batch in (("batching", 8), ("no_batching", 1)):
            settings = {"K2D_MODELS_DIR": str(registry.store), "K2D_MODELS": json.dumps([model]),
                        "K2D_MAX_BATCH_SIZE": str(batch), "K2D_MAX_WAIT_MS": "10", "K2D_CPU_THREADS": str(args.threads),
                        "K2D_MAX_QUEUE_WINDOWS": "1024"}
            with serving(settings) as server:
                summary = run(server.url, manifest, args.out / label, [model], [1, 16], args.requests, rounds=1,
                              warmup=2)
            results[label] = {r["concurrency"]: r for r in summary["results"]}
        direct = direct_latencies(registry.path_of(model), manifest, args.threads)
    served = results["batching"][1]["latency_s"]
    results["direct_engine_latency_s"] = {"mean": statistics.mean(direct), "p50": statistics.median(direct)}
    results["overhead_ms_p50"] = round(1000 * (served["p50"] - statistics.median(direct)), 1)
    results["batching_speedup_c16"] = round(results["batching"][16]["requests_per_s"]
                                            / results["no_batching"][16]["requests_per_s"], 3)
    results["batching_speedup_c1"] = round(results["batching"][1]["requests_per_s"]
                                           / results["no_batching"][1]["requests_per_s"], 3)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Serving benchmark: {model}", "", f"{results['hardware']}; `{command_line()}`", "",
             "| config | concurrency | req/s | p50 s | p95 s |", "|---|---|---|---|---|"]
    for label in ("batching", "no_batching"):
        for level in (1, 16):
            r = results[label][level]
            lines.append(f"| {label} | {level} | {r['requests_per_s']:.2f} | {r['latency_s']['p50']:.3f} | "
                         f"{r['latency_s']['p95']:.3f} |")
    lines += ["", f"- batching on ÷ off, requests/s: {results['batching_speedup_c16']:.2f}× at concurrency 16, "
                  f"{results['batching_speedup_c1']:.2f}× at concurrency 1",
              f"- service overhead at concurrency 1 (server p50 − direct engine p50): {results['overhead_ms_p50']} ms "
              f"(direct engine p50 {1000 * results['direct_engine_latency_s']['p50']:.0f} ms)", ""]
    (args.out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
