"""From samples to ``summary.json``, a Markdown report and PNG plots.

``summary.json`` schema (version 1)::

    {"version": 1, "url": str, "started": ISO-8601, "duration_s": float, "stopped_early": bool,
     "models": [str], "levels": [int], "hardware": str,
     "results": [{"model": str, "concurrency": int, "requests": int, "ok": int,
                  "errors": {"<status>": int},           # status 0 = connection error
                  "latency_s": {"p50", "p90", "p95", "p99", "mean", "max"},   # successful requests
                  "requests_per_s": float,               # ok requests / busy wall time of this model+level
                  "audio_s_per_s": float}],              # RTFx: audio seconds served per wall second
     "speedup": [{"concurrency": int, "student": str, "teacher": str,
                  "p50_latency_ratio": float,            # teacher p50 / student p50
                  "throughput_ratio": float}]}           # student req/s / teacher req/s
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q, method="linear")) if values else math.nan


def summarize(samples, wall: dict, models: list[str], levels: list[int]) -> list[dict]:
    results = []
    for model in models:
        for level in levels:
            mine = [s for s in samples if s.model == model and s.concurrency == level]
            if not mine:
                continue
            ok = [s for s in mine if s.status == 200]
            latencies = [s.latency_s for s in ok]
            errors: dict[str, int] = {}
            for s in mine:
                if s.status != 200:
                    errors[str(s.status)] = errors.get(str(s.status), 0) + 1
            seconds = wall.get((model, level), 0.0) or math.nan
            results.append({
                "model": model, "concurrency": level, "requests": len(mine), "ok": len(ok), "errors": errors,
                "latency_s": {**{f"p{q}": round(percentile(latencies, q), 4) for q in PERCENTILES},
                              "mean": round(float(np.mean(latencies)), 4) if latencies else math.nan,
                              "max": round(max(latencies), 4) if latencies else math.nan},
                "requests_per_s": round(len(ok) / seconds, 3),
                "audio_s_per_s": round(sum(s.audio_s for s in ok) / seconds, 3),
                **accuracy(ok),
            })
    return results


def accuracy(ok) -> dict:
    """MER over the answers whose clip has a reference (each answer counts), and answers that loop."""
    scored = [s for s in ok if getattr(s, "reference", None) is not None and s.text is not None]
    if not scored:
        return {}
    from k2d.scoring import ErrorCounts, mer_counts, repeated_ngram

    total = ErrorCounts()
    for sample in scored:
        total = total + mer_counts(sample.reference, sample.text)
    return {"mer": round(total.rate, 4), "loops": sum(repeated_ngram(s.text) for s in scored), "scored": len(scored)}


def speedups(results: list[dict], student: str, teacher: str) -> list[dict]:
    by = {(r["model"], r["concurrency"]): r for r in results}
    out = []
    for (model, level), row in sorted(by.items(), key=lambda kv: kv[0][1]):
        if model != student or (teacher, level) not in by:
            continue
        other = by[(teacher, level)]
        out.append({"concurrency": level, "student": student, "teacher": teacher,
                    "p50_latency_ratio": round(other["latency_s"]["p50"] / row["latency_s"]["p50"], 3),
                    "mean_latency_ratio": round(other["latency_s"]["mean"] / row["latency_s"]["mean"], 3),
                    "throughput_ratio": round(row["requests_per_s"] / other["requests_per_s"], 3)})
    return out


def markdown(summary: dict) -> str:
    lines = [f"# Load test: {', '.join(summary['models'])}", "",
             f"{summary['started']} · {summary['hardware']} · target {summary['url']} · "
             f"{summary['duration_s']:.0f} s{' (stopped early)' if summary['stopped_early'] else ''}", "",
             "| model | concurrency | ok/requests | mean s | p50 s | p90 s | p95 s | p99 s | req/s | RTFx | MER | loops | "
             "errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["results"]:
        lat = r["latency_s"]
        lines.append(f"| {r['model']} | {r['concurrency']} | {r['ok']}/{r['requests']} | {lat['mean']:.3f} | "
                     f"{lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p95']:.3f} | {lat['p99']:.3f} | "
                     f"{r['requests_per_s']:.2f} | {r['audio_s_per_s']:.2f} | {r.get('mer', '')} | {r.get('loops', '')} | "
                     f"{r['errors'] or ''} |")
    if summary["speedup"]:
        lines += ["", "| concurrency | student / teacher throughput | teacher / student latency p50 | … mean |",
                  "|---|---|---|---|"]
        lines += [f"| {s['concurrency']} | {s['throughput_ratio']:.2f}× | {s['p50_latency_ratio']:.2f}× | "
                  f"{s.get('mean_latency_ratio', float('nan')):.2f}× |" for s in summary["speedup"]]
    lines += ["", "![latency CDF](latency_cdf.png) ![throughput](throughput.png) ![speed-up](speedup.png)", ""]
    return "\n".join(lines)


def _figure(plt, out: Path, name: str, draw, **labels) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    draw(ax)
    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)


def plots(summary: dict, samples, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top, levels = max(summary["levels"]), summary["levels"]

    def cdf(ax):
        for model in summary["models"]:
            values = sorted(s.latency_s for s in samples if s.model == model and s.concurrency == top and s.status == 200)
            if values:
                ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=model)

    def throughput(ax):
        for model in summary["models"]:
            rows = [r for r in summary["results"] if r["model"] == model]
            ax.plot([r["concurrency"] for r in rows], [r["requests_per_s"] for r in rows], marker="o", label=model)
        ax.set_xscale("log")
        ax.set_xticks(levels, [str(level) for level in levels])

    def speedup(ax):
        rows = summary["speedup"]
        ax.plot([r["concurrency"] for r in rows], [r["throughput_ratio"] for r in rows], marker="o", label="throughput")
        ax.plot([r["concurrency"] for r in rows], [r["p50_latency_ratio"] for r in rows], marker="s", label="p50 latency")
        ax.axhline(1.0, color="grey", lw=0.8)

    _figure(plt, out, "latency_cdf.png", cdf, xlabel="latency (s)", ylabel="fraction of requests",
            title=f"Latency CDF at concurrency {top}")
    _figure(plt, out, "throughput.png", throughput, xlabel="concurrency", ylabel="requests / s", title="Throughput")
    _figure(plt, out, "speedup.png", speedup, xlabel="concurrency", ylabel="student / teacher (×)",
            title="Student speed-up over the teacher")


def write(summary: dict, samples, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(markdown(summary))
    plots(summary, samples, out)
