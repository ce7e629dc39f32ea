"""Resident memory of ``k2d serve`` per model set: the "RSS when served" column (a measurement, not a test).

Each set is served alone (``K2D_MODELS``), every clip of the manifest is sent once to its first model,
and the server's RSS is sampled throughout (after the models are loaded, at the peak, at the end).

    K2D_MODELS_DIR=<store> k2d bench rss runs/full/corpus/test_ood.jsonl \\
        teacher=whisper-base-int8 student=k2d-student-full "student+teacher=k2d-student-full,whisper-base-int8"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx

from k2d.manifest import read_manifest
from k2d_bench import command_line
from loadtest.harness import RssSampler, Server


def measure(models: list[str], clips: list[Path], language: str) -> dict:
    server = Server({"K2D_MODELS": json.dumps(models)})
    url = server.url
    sampler = RssSampler(server.pid)
    sampler.start()
    try:
        with httpx.Client(timeout=300) as http:
            for clip in clips:
                response = http.post(url + "/transcribe", files={"file": (clip.name, clip.read_bytes())},
                                     data={"model": models[0], "language": language})
                response.raise_for_status()
    finally:
        sampler.stop.set()
        sampler.join()
        server.stop()
    return sampler.summary()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("sets", nargs="+", help="LABEL=MODEL[,MODEL...]; requests go to the first model")
    parser.add_argument("--language", default="zh")
    parser.add_argument("--limit", type=int, default=10, help="clips sent per set")
    args = parser.parse_args(argv)
    clips = [row.path(args.manifest) for row in read_manifest(args.manifest)][: args.limit]
    lines = [f"`{command_line()}`", "",
             "| served | models | RSS loaded MB | RSS peak MB | RSS end MB |", "|---|---|---|---|---|"]
    for spec in args.sets:
        label, _, names = spec.partition("=")
        models = names.split(",")
        found = measure(models, clips, args.language)
        lines.append(f"| {label} | {', '.join(models)} | {found['start_mb']} | {found['peak_mb']} | {found['end_mb']} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
