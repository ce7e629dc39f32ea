"""The body of each ``k2d run`` stage: a function of the :class:`~k2d_train.pipeline.stage_graph.Run` (recipe, store,
paths and every earlier stage's result) returning this stage's result. ``run.py`` numbers them and
decides which still need to run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

from k2d.manifest import read_manifest, write_manifest
from k2d_train.pipeline.config import TEST_SETS, RunConfig
from k2d_train.pipeline.stage_graph import BOOKKEEPING, Run, StagePaused, recipe_of
from k2d_train.store.operations import hf_name


def corpus(run: Run) -> dict:
    config, paths = run.config, run.paths
    if "synth" in config.corpus:
        from k2d_train.data.synth import SynthOptions, build_corpus

        values = dict(config.corpus["synth"] or {})
        if values.get("audio_store"):  # like run_dir: relative to the recipe's folder
            values["audio_store"] = str((config.base / values["audio_store"]).resolve())
        options = SynthOptions(**values)
        build_corpus(paths["root"], options)
        return {"synth": options.__dict__}
    missing = [str(p) for key, p in paths.items() if key not in ("root", "dataset") and not p.exists()]
    if missing:
        raise FileNotFoundError(f"corpus paths do not exist: {missing}")
    return {key: str(p) for key, p in paths.items()}


def pseudo_labels(run: Run) -> dict:
    from k2d_train.stages.s2_pseudo_label import pseudo_label

    config = run.config
    source = run.paths.get("audio") or str(run.paths["dataset"])  # audio files / manifest, or a HF dataset
    out = config.run_dir / "pseudo"
    reused = sum(_reuse_labels(run, folder, source, out) for folder in config.pseudo_label.reuse)
    result = pseudo_label(config.teacher, source, out, config.pseudo_label, run.registry.store)
    return {**result, "reused_files": reused} if config.pseudo_label.reuse else result


def _reuse_labels(run: Run, folder: str, source: str | Path, out: Path) -> int:
    """Seed this run's labels from another run's (``pseudo_label.reuse``) when that run's teacher and options are
    this recipe's; refuse a run made otherwise, since its labels would not be the ones this recipe makes. A run not
    made (yet) is said and passed over: a shipped recipe naming one still runs on a fresh clone. Returns the
    number of files taken (the stage's result records it: ``reused_files``)."""
    from k2d_train.stages.s2_pseudo_label import is_dataset, list_audio, seed_parts

    config = run.config
    other = (config.base / folder).resolve()
    made = other / "stages" / "pseudo-label.json"
    if not made.exists() or not (other / "pseudo" / "chunks.jsonl").exists():
        run.say(f"  pseudo_label.reuse: {other} has no finished pseudo-label stage; nothing taken from it")
        return 0
    theirs = json.loads(made.read_text()).get("recipe", {})
    ours = recipe_of(config, theirs)
    if theirs != ours:
        raise ValueError(f"pseudo_label.reuse: {other} was labelled with another recipe "
                         f"({', '.join(k for k in theirs if theirs[k] != ours.get(k))} differ); its labels are not "
                         "this recipe's")
    if is_dataset(source):
        raise ValueError("pseudo_label.reuse: takes labels of audio files or a manifest, not of a dataset")
    taken = seed_parts(other / "pseudo" / "chunks.jsonl", out, list_audio(Path(source)))
    run.say(f"  {taken} file(s) labelled by {other.name} taken as they are")
    return taken


def validation(run: Run) -> dict:
    from k2d_train.stages.s3_validate import validate

    config = run.config
    chunks = config.run_dir / "pseudo" / "chunks.jsonl"
    options = dataclasses.replace(config.validate, also_rules=tuple(config.ablation_rules))
    stats = validate(config.validator, chunks, config.run_dir / "validate", options, run.registry.store)
    return {"rules": stats, "total_chunks": sum(1 for _ in read_manifest(chunks))}


def student_init(run: Run) -> dict:
    from k2d_train.stages.s4_student import build_student

    config = run.config
    shape = config.student
    kept, teacher_params, student_params = build_student(run.registry.path_of(hf_name(config.teacher)),
                                                         config.run_dir / "student-init", shape.decoder_layers,
                                                         shape.encoder_layers, shape.encoder_ffn_ratio)
    return {"kept_layers": kept, "teacher_parameters": teacher_params, "student_parameters": student_params,
            "shape": shape.__dict__}


def encoder_distillation(run: Run) -> dict:
    from k2d_train.stages.s5_distill_encoder import distill_encoder

    config, registry = run.config, run.registry
    options = config.distill_encoder
    extra = run.paths.get("extra_audio")
    if options.extra_audio is None and extra is not None and extra.exists():
        options = replace(options, extra_audio=str(extra))  # the corpus stage wrote encoder-only audio
    return finished(distill_encoder(registry.path_of(hf_name(config.teacher)), config.run_dir / "student-init",
                                    config.run_dir / "validate" / "kept.jsonl", config.run_dir / "distill-encoder",
                                    options, config.run_dir / "student-encoder", registry.store,
                                    teacher_cache=config.run_dir / "teacher_states",
                                    teacher_ct2=registry.path_of(config.teacher)), options.max_steps)


def finished(report: dict, max_steps: int) -> dict:
    """A trained stage's report, or a pause when ``stop_after_steps`` stopped it at a checkpoint before the end."""
    if report["steps"] < max_steps:
        raise StagePaused(f"{report['steps']} of {max_steps} steps, checkpointed")
    return report


def student_start(run: Run) -> Path:
    """The decoder stage starts from the distilled encoder when there is one."""
    trained = run.config.run_dir / "student-encoder"
    return trained if "distill-encoder" in run.results and trained.is_dir() else run.config.run_dir / "student-init"


def kept_for_rule(run: Run, rule: str) -> Path:
    """``kept.jsonl`` of the configured rule, or a re-filtered copy for an ablation rule."""
    from k2d_train.stages.s3_validate import kept_chunks

    config = run.config
    if rule == config.validate.rule:
        return config.run_dir / "validate" / "kept.jsonl"
    out = config.run_dir / f"ablation-{rule}" / "kept.jsonl"
    validated = [{"audio": r.audio, **r.extra} for r in read_manifest(config.run_dir / "validate" / "validated.jsonl")]
    # validate/ and ablation-<rule>/ are siblings, so the relative audio paths stay valid
    write_manifest(out, kept_chunks(validated, rule, config.validate.alpha, ngram_n=config.validate.ngram_n,
                                    ngram_count=config.validate.ngram_count))
    return out


def distillation(run: Run, rule: str | None = None) -> dict:
    from k2d_train.stages.s6_distill import distill

    config, registry, paths = run.config, run.registry, run.paths
    rule = rule or config.validate.rule
    main = rule == config.validate.rule
    folder = config.run_dir if main else config.run_dir / f"ablation-{rule}"
    final = registry.folder(config.name, "hf") if main else folder / "final"
    dev = paths.get("dev_ood") or paths.get("dev")  # the kept checkpoint is the best on voices never heard
    report_dev = [paths["dev"]] if paths.get("dev_ood") and paths.get("dev") else []
    report = distill(registry.path_of(hf_name(config.teacher)), student_start(run), kept_for_rule(run, rule),
                     folder / "distill", config.distill, dev=dev, resume=True, final_dir=final, report_dev=report_dev,
                     teacher_cache=config.run_dir / "teacher_states", teacher_ct2=registry.path_of(config.teacher))
    finished(report, config.distill.max_steps)
    if main:
        from k2d_train.stages.s4_student import register_student

        init = run.results["student"]
        register_student(registry, config.name, final, init["student_parameters"], registry.get(config.teacher),
                         f"k2d-run:{config.source}", init["kept_layers"])
    return report


def register_and_export(config, registry, name: str, final: Path, kept_layers: list[int], source: str):
    """Register a trained student's transformers folder and export it for serving (``k2d curve``'s points)."""
    from k2d_train.stages.s4_student import register_student
    from k2d_train.store.operations import hf_parameter_count

    register_student(registry, name, final, hf_parameter_count(final), registry.get(config.teacher), source,
                     kept_layers)
    return export_student(config, registry, name)


def export_teacher(config, registry) -> str:
    """The teacher in the run's quantization (like with like beside its student), exported once; its name."""
    from k2d_train.store.operations import export

    q = config.quantization
    name = f"{config.teacher}-{q.replace('_', '-')}"
    if name not in registry or not registry.path_of(name).is_dir():
        export(registry, config.teacher, q, name)
    return name


def export_student(config, registry, name: str):
    """The CTranslate2 student in the run's quantization, registered to be served as it will be: beside its
    teacher for fallback, in its own language, with the configured repetition penalty."""
    from k2d_train.store.operations import export

    student = export(registry, hf_name(name), config.quantization, name)
    student.serving = replace(student.serving, teacher=registry.get(config.teacher).family or config.teacher,
                              default_language=config.pseudo_label.language,
                              repetition_penalty=config.export.repetition_penalty)
    registry.add(student)
    return trim_student(config, registry, student) if config.export.trim_vocabulary else student


def trim_student(config, registry, student):
    """The exported student keeps the tokens of the labels it learnt from, in the script it learnt to write; the
    full export is registered as ``<name>-full-vocabulary`` (to compare, or to detect languages)."""
    from k2d_train.store.operations import trim

    full = replace(student, name=f"{student.name}-full-vocabulary")
    registry.add(full)
    return trim(registry, full.name, [config.run_dir / "validate" / "kept.jsonl"], student.name,
                script=config.distill.label_script, english_words=config.export.trim_english_words)


def ctc_distillation(run: Run) -> dict:
    from k2d_train.stages.s7_distill_ctc import distill_ctc

    config = run.config
    dev = run.paths.get("dev_ood") or run.paths.get("dev")
    return finished(distill_ctc(student_start(run), config.run_dir / "validate" / "kept.jsonl",
                                config.run_dir / "distill-ctc", config.distill_ctc, dev=dev,
                                out_dir=config.run_dir / "ctc-final"), config.distill_ctc.max_steps)


def export_models(run: Run) -> dict:
    config, registry = run.config, run.registry
    student = export_student(config, registry, config.name)
    teacher_name = export_teacher(config, registry)
    exported = {"student": student.name, "teacher": teacher_name}
    if "distill-ctc" in run.results:
        from k2d_train.store.onnx_export import publish_ctc_student

        exported["ctc_student"] = publish_ctc_student(registry, config.ctc_name, config.run_dir / "ctc-final",
                                                      config.distill_ctc.quantization, config.pseudo_label.language,
                                                      student.serving.teacher, f"k2d-run:{config.source}").name
    return exported


def evaluation(run: Run) -> dict:
    """Teacher and student side by side through the serving path, in and out of domain, per voice group."""
    import json

    from k2d_train.experiments.compare import compare, group_markdown

    config = run.config
    contenders = evaluation_contenders(config, run.results["export"])
    sets = {name: run.paths[name] for name in TEST_SETS if name in run.paths and run.paths[name].exists()}
    rows = compare(contenders, sets, config.evaluate, run.registry.store, run.say)
    for line in group_markdown(rows):
        run.say(line)
    (config.run_dir / "evaluate").mkdir(parents=True, exist_ok=True)
    (config.run_dir / "evaluate" / "compare.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    return {"rows": rows, "compute_type": config.evaluate.compute_type, "device": config.evaluate.device}


def evaluation_contenders(config: RunConfig, exported: dict) -> list:
    """Stage 9's models, the teacher first (the baseline of every interval). With ``ablation_contexts`` also the
    cheapest shortcut a trained student must beat — the untrained teacher served at the student's own short
    context — and the student without its teacher fallback."""
    from k2d_train.experiments.compare import Contender

    contenders = [Contender("teacher", exported["teacher"]), Contender("student", exported["student"])]
    if exported.get("ctc_student"):
        contenders.append(Contender(f"{config.distill_ctc.head} student", exported["ctc_student"]))
    if config.ablation_contexts and config.distill_encoder is not None:  # without stage 5 the student is served at 30 s
        contenders.append(Contender.short_context_teacher(exported["teacher"], config.distill_encoder.policy))
    if config.ablation_contexts:
        contenders.append(Contender("student, no teacher fallback", exported["student"], {"teacher_fallback": False}))
    return contenders


def ablations(run: Run) -> dict:
    """Same training on the chunks another rule keeps, then test MER in and out of domain: what filtering buys."""
    from k2d_train.stages.s9_evaluate import transcribe_manifest
    from k2d_train.store.convert import transformers_to_ct2

    config, out = run.config, {}
    for rule in config.ablation_rules:
        report = distillation(run, rule)
        folder = config.run_dir / f"ablation-{rule}"
        transformers_to_ct2(folder / "final", folder / "ct2", config.quantization)
        scores = {}
        for name in TEST_SETS:
            if name in run.paths and run.paths[name].exists():
                summary = transcribe_manifest(str(folder / "ct2"), run.paths[name], folder / f"{name}-hypotheses.jsonl",
                                              config.evaluate, run.registry.store)
                scores[name] = summary.scores
        kept = sum(1 for _ in read_manifest(folder / "kept.jsonl"))
        out[rule] = {"scores": scores, "kept_chunks": kept, "steps": report["steps"]}
    return out


def model_card(run: Run) -> dict:
    from k2d.context import ContextPolicy
    from k2d_train.store.model_card import write_card

    config, registry, results = run.config, run.registry, run.results
    rule, student, trained = config.validate.rule, results["student"], results["distill"]
    validated, encoder, evaluation = results["validate"], results.get("distill-encoder"), results["evaluate"]
    policy = ContextPolicy.of_model(registry.path_of(config.name))
    card = {
        "name": config.name, "teacher": config.teacher, "validator": config.validator,
        "decoder_layers_kept": len(student["kept_layers"]), "kept_layers": student["kept_layers"],
        "student_shape": student.get("shape", {}),
        "teacher_parameters": student["teacher_parameters"], "student_parameters": student["student_parameters"],
        "rule": rule, "alpha": config.validate.alpha, "kept_percent": validated["rules"][rule]["percent"],
        "kept_chunks": validated["rules"][rule]["chunks"], "kept_per_rule": validated["rules"],
        "encoder_distillation": {"steps": encoder["steps"], "chunks": encoder["chunks"]} if encoder else None,
        "context": policy.describe(), "repetition": dataclasses.asdict(registry.get(config.name).repetition_penalty),
        "steps": trained["steps"], "examples": trained["examples"], "best_dev": trained.get("best"),
        "evaluation": [r for r in evaluation["rows"] if "set" in r],
        "compute_type": evaluation["compute_type"], "device": evaluation["device"],
        "test_manifests": {name: str(run.paths[name]) for name in TEST_SETS if name in run.paths},
        "config": str(config.source), "language": config.pseudo_label.language,
    }
    if results.get("ablation"):
        card["ablation"] = {k: v for k, v in results["ablation"].items() if k not in BOOKKEEPING}
    write_card(registry.path_of(config.name), card)
    entry = registry.get(config.name)
    entry.card = card
    entry.serving = replace(entry.serving, default_language=config.pseudo_label.language)
    registry.add(entry)
    return card
