"""Minute-long test audio from a labelled set: its utterances joined with 0.8 s pauses (a measurement aid).

Checks that long uploads — several VAD windows each — still transcribe correctly with a short-context
student; the reference is the joined texts. Writes ``long.jsonl`` and the FLAC files to ``OUT``.

    k2d data long-audio runs/demo/corpus/test_ood.jsonl runs/long-ood [--per-file 12]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from k2d.audio import SAMPLE_RATE, decode_audio, write_audio
from k2d.manifest import read_manifest
from k2d.textunits import join_texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-file", type=int, default=12)
    parser.add_argument("--pause-s", type=float, default=0.8)
    args = parser.parse_args(argv)
    rows = list(read_manifest(args.manifest))
    pause = np.zeros(int(args.pause_s * SAMPLE_RATE), np.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(len(rows) // args.per_file):
        group = rows[k * args.per_file : (k + 1) * args.per_file]
        audio = np.concatenate([np.concatenate([decode_audio(row.path(args.manifest)), pause]) for row in group])
        name = f"long_{k}.flac"
        write_audio(args.out / name, audio)
        lines.append(json.dumps({"audio": name, "text": join_texts([row.text or "" for row in group]),
                                 "language": group[0].extra.get("language", "zh"),
                                 "duration": round(len(audio) / SAMPLE_RATE, 2)}, ensure_ascii=False))
    (args.out / "long.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} files in {args.out}")


if __name__ == "__main__":
    main()
