"""Measurements, not tests (``k2d bench ...``): each writes its table and the command that made it.

- ``speed``: encode and forced-length decode timings, teacher vs student interleaved;
- ``serving``: what cross-request batching buys, and the service's overhead over the bare engine;
- ``shadow``: shadow scoring's cost to foreground latency (ABBA phases);
- ``threads``: encoder/decoder intra-op thread splits on a CPU;
- ``decoder-cost``: a decoding step split into per-layer and fixed cost;
- ``train-step``: a decoder-training step, float32 or bf16, the token embedding trained or frozen;
- ``rss``: the server's resident memory with a set of models loaded.
Servers are started with the one harness (``loadtest.harness``).
"""

from __future__ import annotations

import sys
from pathlib import Path


def command_line() -> str:
    """The ``k2d ...`` command being run, for the report."""
    return "k2d " + " ".join(sys.argv[1:])


def report(lines: list[str], out: Path | None) -> None:
    """Print a benchmark's Markdown and, given ``out``, write it there."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
