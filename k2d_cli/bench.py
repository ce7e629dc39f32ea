"""``k2d bench ...``: measurements, not tests (``k2d_bench``). Each prints its table and the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from k2d.registry import Registry, default_store
from k2d_cli.common import StoreOption, run_guarded, say

bench_app = typer.Typer(help="Speed and memory measurements (benchmarks, not tests).", no_args_is_help=True)
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@bench_app.command("speed")
def bench_speed(
    pair: Annotated[list[str], typer.Option(help="base (store's teacher + student) | large-v2 | medium | small")] = [
        "base"],
    batch: Annotated[list[int], typer.Option(help="Batch sizes")] = [1, 8],
    compute_type: Annotated[list[str], typer.Option(help="int8, float16, int8_float16, ...")] = ["int8"],
    device: str = "cpu",
    tokens: Annotated[int, typer.Option(help="Forced decode length")] = 100,
    repeats: int = 5,
    threads: Annotated[int, typer.Option(help="CPU threads (0: default)")] = 0,
    context: Annotated[list[float], typer.Option(help="Student encoder input in seconds (0: Whisper's 30 s); the "
                                                     "teacher always gets 30 s")] = [0.0],
    student_encoder_layers: Annotated[int | None, typer.Option(help="Random pairs: a shallower student encoder")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for results.json and README.md")] = None,
    store: StoreOption = None,
) -> None:
    """Encode and forced-length decode timings, teacher vs student interleaved, medians."""
    import platform
    import sys

    from k2d_bench.speed import model_pairs, speed_benchmark, speed_markdown

    registry = Registry(store or default_store())
    pairs = run_guarded(lambda: model_pairs(pair, registry, say, student_encoder_layers))
    rows = run_guarded(lambda: speed_benchmark(pairs, batch, compute_type, device, tokens, repeats, threads, say, context))
    text = speed_markdown(rows, "k2d " + " ".join(sys.argv[1:]), f"{platform.machine()}, {device}")
    say(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
        (out / "README.md").write_text(text)


def _pass_through(name: str, module: str, summary: str) -> None:
    """A benchmark with its own options (``k2d bench NAME --help`` lists them)."""

    def command(ctx: typer.Context) -> None:
        from importlib import import_module

        run_guarded(lambda: import_module(f"k2d_bench.{module}").main(ctx.args))

    command.__doc__ = summary
    bench_app.command(name, context_settings=PASS_THROUGH, add_help_option=False)(command)


_pass_through("serving", "serving", "Batching on vs off through the real server, and the service's overhead.")
_pass_through("shadow", "shadow", "Shadow scoring's cost to foreground latency (ABBA phases).")
_pass_through("threads", "threads", "Encoder/decoder thread splits on a CPU, models interleaved.")
_pass_through("decoder-cost", "decoder_cost", "A decoding step split into per-layer and fixed cost.")
_pass_through("train-step", "train_step", "A decoder-training step: float32 or bf16, embedding trained or frozen.")
_pass_through("rss", "rss", "The server's resident memory with sets of models loaded.")
