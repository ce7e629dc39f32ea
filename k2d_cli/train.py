"""Training-side commands of ``k2d``: data synth, pseudo-label, validate, student, distill, run.

Kept apart from ``k2d/cli.py`` (store and serving) so each file stays one concern; every heavy
import happens inside the command that needs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from k2d.registry import Registry, default_store

console = Console(stderr=True, soft_wrap=True)
StoreOption = Annotated[Path | None, typer.Option("--store", help="Model store [default: $K2D_MODELS_DIR or ./models]")]
data_app = typer.Typer(help="Corpora for training and tests.", no_args_is_help=True)
bench_app = typer.Typer(help="Speed measurements (benchmarks, not tests).", no_args_is_help=True)


def register(app: typer.Typer, guarded, say) -> None:
    """Attach the training commands to the root ``k2d`` app."""
    app.add_typer(data_app, name="data")
    app.add_typer(bench_app, name="bench")

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
        out: Annotated[Path | None, typer.Option(help="Folder for results.json and README.md")] = None,
        store: StoreOption = None,
    ) -> None:
        """Encode and forced-length decode timings, teacher vs student interleaved, medians."""
        import platform
        import sys

        from k2d_train.bench import model_pairs, speed_benchmark, speed_markdown

        registry = Registry(store or default_store())
        pairs = guarded(lambda: model_pairs(pair, registry, say))
        rows = guarded(lambda: speed_benchmark(pairs, batch, compute_type, device, tokens, repeats, threads, say))
        text = speed_markdown(rows, "k2d " + " ".join(sys.argv[1:]), f"{platform.machine()}, {device}")
        say(text)
        if out:
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
            (out / "README.md").write_text(text)

    @data_app.command("synth")
    def synth(
        out: Annotated[Path, typer.Option(help="Output folder")] = Path("data/synth"),
        seed: int = 0,
        lectures: Annotated[int, typer.Option(min=1)] = 8,
        lecture_minutes: Annotated[float, typer.Option(min=0.2)] = 2.5,
        test: Annotated[int, typer.Option(min=1)] = 40,
        dev: Annotated[int, typer.Option(min=1)] = 20,
    ) -> None:
        """Synthetic code-switching corpus: unlabelled lectures + labelled dev/test manifests."""
        from k2d_train.data.synth import SynthOptions, build_corpus

        options = SynthOptions(seed, lectures, lecture_minutes, test, dev)
        built = guarded(lambda: build_corpus(out, options))
        say(f"corpus {'written' if built else 'already present'} in {out}")

    @app.command("pseudo-label")
    def pseudo_label_command(
        source: Annotated[Path, typer.Argument(help="Folder of audio files or a JSONL manifest", exists=True)],
        out: Annotated[Path, typer.Option(help="Output folder (chunks.jsonl, parts/)")],
        teacher: str = "whisper-base",
        language: Annotated[str | None, typer.Option(help="Force a language [default: zh]")] = "zh",
        beam_size: int = 5,
        batch_size: int = 8,
        nbest: Annotated[int, typer.Option(min=1, help="Beam hypotheses kept per chunk (sequence-level KD)")] = 1,
        device: str = "cpu",
        compute_type: str = "int8",
        store: StoreOption = None,
    ) -> None:
        """The teacher transcribes long-form audio into ≤ 30 s chunks with timestamp labels."""
        from k2d_train.stages.s1_pseudo_label import PseudoLabelOptions, pseudo_label

        options = PseudoLabelOptions(language=language, beam_size=beam_size, batch_size=batch_size, nbest=nbest,
                                     device=device, compute_type=compute_type)
        result = guarded(lambda: pseudo_label(teacher, source, out, options, store or default_store()))
        say(json.dumps(result))

    @app.command("validate")
    def validate_command(
        chunks: Annotated[Path, typer.Argument(help="chunks.jsonl from pseudo-label", exists=True, dir_okay=False)],
        out: Annotated[Path, typer.Option(help="Output folder (validated.jsonl, kept.jsonl)")],
        validator: str = "whisper-base",
        rule: Annotated[str, typer.Option(help="none | ngram | mer | per | comp")] = "comp",
        alpha: float = 0.4,
        ngram_n: int = 3,
        ngram_count: int = 3,
        store: StoreOption = None,
    ) -> None:
        """Re-transcribe every chunk with the validator and keep those with δ ≤ α."""
        from k2d_train.stages.s2_validate import ValidateOptions, summary_table, validate

        options = ValidateOptions(rule=rule, alpha=alpha, ngram_n=ngram_n, ngram_count=ngram_count)
        stats = guarded(lambda: validate(validator, chunks, out, options, store or default_store()))
        Console().print(summary_table(stats, stats["none"]["chunks"], alpha))

    @app.command("student")
    def student_command(
        teacher: str = "whisper-base",
        name: str = "k2d-student",
        decoder_layers: Annotated[int, typer.Option(min=1)] = 2,
        store: StoreOption = None,
    ) -> None:
        """Copy the teacher's encoder and N maximally spaced decoder layers; register the student."""
        from k2d_train.stages.s3_student import create_student

        registry = Registry(store or default_store())
        report = guarded(lambda: create_student(registry, teacher, name, decoder_layers))
        say(f"{report.name}: decoder layers {report.kept_layers}; parameters {report.teacher_parameters:,} → "
            f"{report.student_parameters:,} ({report.student_parameters / report.teacher_parameters:.1%})")

    @app.command("distill")
    def distill_command(
        kept: Annotated[Path, typer.Argument(help="kept.jsonl from validate", exists=True, dir_okay=False)],
        out: Annotated[Path, typer.Option(help="Run folder (checkpoints, logs, encoder cache)")],
        teacher: str = "whisper-base",
        student: str = "k2d-student",
        dev: Annotated[Path | None, typer.Option(help="Labelled dev manifest for MER every --eval-every steps")] = None,
        max_steps: int = 200,
        batch_size: int = 4,
        learning_rate: float = 1e-4,
        eval_every: int = 50,
        save_every: int = 50,
        use_nbest: bool = False,
        resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out")] = False,
        store: StoreOption = None,
    ) -> None:
        """Train the registered student (CE + KL to the teacher); the result replaces its weights."""
        from k2d_train.stages.s5_distill import DistillOptions, distill
        from k2d_train.store.operations import hf_name

        registry = Registry(store or default_store())
        options = DistillOptions(max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                                 eval_every=eval_every, save_every=save_every, use_nbest=use_nbest)
        student_dir = registry.path_of(hf_name(student) if not student.endswith("-hf") else student)
        report = guarded(lambda: distill(registry.path_of(hf_name(teacher)), student_dir, kept, out, options, dev,
                                         resume, final_dir=student_dir))
        say(json.dumps(report["last"]))

    @app.command("run")
    def run_command(
        config: Annotated[Path, typer.Argument(help="Pipeline config (YAML)", exists=True, dir_okay=False)],
        ablation: Annotated[list[str] | None, typer.Option(help="Also train on another rule's chunks and compare "
                                                                 "(e.g. --ablation none)")] = None,
        store: StoreOption = None,
    ) -> None:
        """All stages, reusing each stage's output when present (configs/demo.yaml: the demo)."""
        from k2d_train.pipeline import RunConfig, run_pipeline

        registry = Registry(store or default_store())

        def load() -> RunConfig:
            loaded = RunConfig.load(config)
            loaded.ablation_rules += [rule for rule in ablation or [] if rule not in loaded.ablation_rules]
            return loaded

        card = guarded(lambda: run_pipeline(load(), registry, say))
        ev = card["evaluation"]
        say(f"test MER teacher {ev['teacher']['mer']:.3f} vs student {ev['student']['mer']:.3f}; "
            f"end-to-end speed-up {card['speed']['end_to_end_speedup']:.2f}×")
