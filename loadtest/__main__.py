"""``python -m loadtest`` (or ``k2d loadtest``): sweep concurrency, compare student and teacher.

Talks HTTP only. Stops by itself: a bounded number of requests per level, and a wall-clock
deadline for the whole run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from tqdm import tqdm

from loadtest import report
from loadtest.runner import UnsafeTargetError, check_target, load_clips, run_sweep

app = typer.Typer(add_completion=False)


def served_models(url: str) -> tuple[list[str], str | None, str | None]:
    data = httpx.get(url + "/v1/models", timeout=30).json()["data"]
    student = next((m["id"] for m in data if m.get("role") == "student"), None)
    teacher = next((m["id"] for m in data if m.get("role") == "teacher"), None)
    return [m for m in (student, teacher) if m] or [data[0]["id"]], student, teacher


def hardware() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, {platform.system()}"


def run(url: str, manifest: Path, out: Path, models: list[str] | None = None, levels: list[int] = (1, 8),
        requests: int = 16, rounds: int = 2, warmup: int = 2, language: str | None = None, timeout_s: float = 300,
        deadline_s: float = 1800, allow_remote: bool = False, hardware_label: str | None = None) -> dict:
    """One sweep; returns the summary (also written to ``out``)."""
    url = url.rstrip("/")
    check_target(url, allow_remote)
    found, student, teacher = served_models(url)
    models = models or found
    clips = load_clips(manifest)
    total = len(models) * sum(max(level, requests // rounds) * rounds for level in levels)
    started, stamp = time.monotonic(), dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with tqdm(total=total, desc="load test", unit="req") as bar:
        raw = asyncio.run(run_sweep(url, models, clips, list(levels), requests, rounds, warmup, language, timeout_s,
                                    deadline_s, bar.update))
    results = report.summarize(raw["samples"], raw["wall"], models, list(levels))
    summary = {
        "version": 1, "url": url, "started": stamp, "duration_s": round(time.monotonic() - started, 1),
        "stopped_early": raw["stopped_early"], "models": models, "levels": list(levels),
        "hardware": hardware_label or hardware(), "results": results,
        "speedup": report.speedups(results, student, teacher) if student in models and teacher in models else [],
    }
    report.write(summary, raw["samples"], out)
    return summary


@app.command()
def main(
    url: Annotated[str, typer.Option(help="Service base URL")] = "http://127.0.0.1:8000",
    manifest: Annotated[Path, typer.Option(help="Audio set (k2d manifest)", exists=True)] = Path(
        "tests/data/manifest.jsonl"),
    out: Annotated[Path, typer.Option(help="Report folder")] = Path("runs/loadtest"),
    model: Annotated[list[str] | None, typer.Option(help="Models [default: the served student and teacher]")] = None,
    concurrency: Annotated[list[int], typer.Option(help="Levels to sweep")] = [1, 8],
    requests: Annotated[int, typer.Option(min=1, help="Requests per model and level")] = 16,
    rounds: Annotated[int, typer.Option(min=1, help="Alternating rounds per level")] = 2,
    warmup: Annotated[int, typer.Option(min=0)] = 2,
    language: str | None = None,
    deadline: Annotated[float, typer.Option(help="Stop the whole run after this many seconds")] = 1800,
    allow_remote: Annotated[bool, typer.Option(help="Allow a non-loopback target")] = False,
    hardware_label: Annotated[str | None, typer.Option(help="Hardware name for the report")] = None,
) -> None:
    """Load-test teacher versus student through the running service."""
    try:
        summary = run(url, manifest, out, model, concurrency, requests, rounds, warmup, language, 300, deadline,
                      allow_remote, hardware_label)
    except (UnsafeTargetError, httpx.HTTPError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(report.markdown(summary))
    typer.echo(f"report written to {out}/ (summary.json, report.md, *.png)")


if __name__ == "__main__":
    app()
