"""Where a decoder-training step's time goes on this machine: float32 or bf16 autocast, the token embedding
trained or frozen (``distill.mixed_precision``, ``distill.freeze_embeddings``).

Stage 6 trains on cached encoder states, so a step is the decoder alone: a few layers, and the product with the
51,865-row output projection (tied to the token embedding) at every label position — forward, the backward to
its input, and (when it trains) the backward to its weight plus AdamW's update of 26.5M weights. The batch is
random, shaped like the scale recipe's (8 chunks, ~20 s of states, 120 tokens); the settings take turns step by
step, so drift on a shared machine hits them alike.

    k2d bench train-step --model models/k2d-scale/hf --out docs/benchmarks/train-step-cpu/README.md

A measurement, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from k2d_bench import command_line, report
from k2d_train.pipeline.options import DistillOptions
from k2d_train.training.loop import cpu_autocast

SETTINGS = (("float32, embedding trained", False, False), ("float32, embedding frozen", False, True),
            ("bf16, embedding trained", True, False), ("bf16, embedding frozen", True, True))


def _step(model, optimizer, states: torch.Tensor, tokens: torch.Tensor, bf16: bool) -> float:
    """Seconds for one forward, backward and optimizer step."""
    start = time.perf_counter()
    with cpu_autocast(DistillOptions(mixed_precision="bf16" if bf16 else "no")):  # what stage 6's loop enters
        logits = model(encoder_outputs=(states,), decoder_input_ids=tokens[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    from transformers import WhisperForConditionalGeneration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a Hugging Face Whisper folder (the student)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=1000, help="encoder states per chunk (20 ms each)")
    parser.add_argument("--tokens", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    setups = []
    for label, bf16, frozen in SETTINGS:
        model = WhisperForConditionalGeneration.from_pretrained(args.model)
        model.model.encoder.requires_grad_(False)
        model.get_input_embeddings().requires_grad_(not frozen)
        trained = [p for p in model.parameters() if p.requires_grad]
        setups.append((label, bf16, model.train(), torch.optim.AdamW(trained, lr=1e-6), sum(p.numel() for p in trained)))
    width = setups[0][2].config.d_model
    states = torch.randn(args.batch_size, args.frames, width)
    tokens = torch.randint(0, setups[0][2].config.vocab_size - 1000, (args.batch_size, args.tokens + 1))
    times: dict[str, list[float]] = {label: [] for label, *_ in setups}
    for repeat in range(args.repeats + 1):  # round 0 warms up
        for label, bf16, model, optimizer, _ in setups if repeat % 2 == 0 else reversed(setups):
            seconds = _step(model, optimizer, states, tokens, bf16)
            if repeat:
                times[label].append(seconds)
    base = statistics.median(times[SETTINGS[0][0]])
    lines = [f"`{command_line()}` ({torch.get_num_threads()} threads)", "",
             f"| setting | trained weights | s per step (median of {args.repeats}) | speed-up |", "|---|---|---|---|"]
    for label, _, _, _, count in setups:
        median = statistics.median(times[label])
        lines.append(f"| {label} | {count / 1e6:.1f}M | {median:.3f} | {base / median:.2f}× |")
    report(lines, args.out)


if __name__ == "__main__":
    main()
