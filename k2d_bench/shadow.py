"""Shadow-scoring benchmark (a measurement, not a test): what a 10 % teacher shadow costs the foreground.

The served student behind the real server, shadow scoring off and on (``K2D_SHADOW_FRACTION``), in
ABBA order so slow drift of the machine hits both alike; each phase keeps ``--concurrency`` requests
in flight for ``--requests`` requests. Reports foreground latency percentiles per setting, the p50
ratio (the issue's bar: on/off ≤ 1.10 at concurrency 4), and what the shadow lane produced: the
disagreement histogram's count and mean from ``/metrics``.

    k2d bench shadow --model k2d-student --manifest runs/demo/corpus/test_ood.jsonl \
        [--fraction 0.1] [--concurrency 4] [--requests 32] [--out docs/benchmarks/shadow-cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from k2d_bench import command_line
from loadtest.__main__ import hardware
from loadtest.harness import REPO, serving
from loadtest.report import percentile
from loadtest.runner import Clip, load_clips, run_sweep


def shadow_stats(url: str) -> dict:
    """Count and mean of ``k2d_shadow_disagreement`` (MER between student and teacher per shadowed window)."""
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    samples = families["k2d_shadow_disagreement"].samples if "k2d_shadow_disagreement" in families else []
    count = sum(s.value for s in samples if s.name.endswith("_count"))
    total = sum(s.value for s in samples if s.name.endswith("_sum"))
    return {"windows": int(count), "mean_mer": round(total / count, 3) if count else None}


def settled_shadow_stats(url: str, fraction: float, patience_s: float = 120.0) -> dict:
    """The shadow lane runs only while no foreground window waits, so under steady load it catches up
    after the sweep: wait until its count stops growing (or ``patience_s``) before reading it."""
    stats, deadline = shadow_stats(url), time.monotonic() + patience_s
    while fraction and time.monotonic() < deadline:
        time.sleep(3.0)
        latest = shadow_stats(url)
        if latest["windows"] == stats["windows"] and latest["windows"] > 0:
            break
        stats = latest
    return stats


def phase(model: str, clips: list[Clip], fraction: float, concurrency: int, requests: int, language: str | None) -> dict:
    with serving({"K2D_SHADOW_FRACTION": str(fraction)}) as server:
        url = server.url
        started = time.perf_counter()
        sweep = asyncio.run(run_sweep(url, [model], clips, [concurrency], requests, 1, 2, language, 300.0, 1800.0))
        wall = time.perf_counter() - started
        shadow = settled_shadow_stats(url, fraction)
    latencies = [s.latency_s * 1000 for s in sweep["samples"] if s.status == 200]
    errors = sum(1 for s in sweep["samples"] if s.status != 200)
    return {"fraction": fraction, "latencies_ms": latencies, "errors": errors, "wall_s": round(wall, 1), **shadow}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--language", default=None)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-shadow")
    args = parser.parse_args(argv)
    clips = load_clips(args.manifest)  # read once, shared by the four phases
    phases = [phase(args.model, clips, f, args.concurrency, args.requests, args.language)
              for f in (0.0, args.fraction, args.fraction, 0.0)]  # ABBA
    rows = []
    for fraction in (0.0, args.fraction):
        latencies = [v for p in phases if p["fraction"] == fraction for v in p["latencies_ms"]]
        rows.append({"shadow_fraction": fraction, "requests": len(latencies),
                     "errors": sum(p["errors"] for p in phases if p["fraction"] == fraction),
                     "p50_ms": round(percentile(latencies, 50), 1), "p90_ms": round(percentile(latencies, 90), 1),
                     "mean_ms": round(statistics.fmean(latencies), 1),
                     "shadowed_windows": sum(p["windows"] for p in phases if p["fraction"] == fraction),
                     "disagreement_mean_mer": next((p["mean_mer"] for p in phases if p["fraction"] == fraction
                                                    and p["mean_mer"] is not None), None)})
    ratio = rows[1]["p50_ms"] / rows[0]["p50_ms"]
    command = command_line()
    lines = [f"`{command}` on {hardware()}", "",
             f"Foreground p50 with {args.fraction:.0%} shadow ÷ without: **{ratio:.3f}** "
             f"(concurrency {args.concurrency}, ABBA phases of {args.requests} requests)", "",
             "| shadow | requests | errors | p50 ms | p90 ms | mean ms | shadowed windows | mean disagreement (MER) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['shadow_fraction']:.0%} | {r['requests']} | {r['errors']} | {r['p50_ms']} | {r['p90_ms']} | "
              f"{r['mean_ms']} | {r['shadowed_windows']} | {r['disagreement_mean_mer']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text(text)
    (args.out / "bench.json").write_text(json.dumps({"rows": rows, "p50_ratio": round(ratio, 3), "phases": phases},
                                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
