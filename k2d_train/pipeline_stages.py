"""The body of each ``k2d run`` stage; ``pipeline.py`` decides which ones still need to run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from k2d.manifest import read_manifest, write_manifest
from k2d.registry import Registry
from k2d_train.pipeline import RunConfig
from k2d_train.store.operations import hf_name


def corpus(config: RunConfig, paths: dict[str, Path]) -> dict:
    if "synth" in config.corpus:
        from k2d_train.data.synth import SynthOptions, build_corpus

        options = SynthOptions(**(config.corpus["synth"] or {}))
        build_corpus(paths["root"], options)
        return {"synth": options.__dict__}
    missing = [str(p) for key, p in paths.items() if key not in ("root", "dataset") and not p.exists()]
    if missing:
        raise FileNotFoundError(f"corpus paths do not exist: {missing}")
    return {key: str(p) for key, p in paths.items()}


def pseudo_labels(config: RunConfig, paths: dict[str, Path], registry: Registry) -> dict:
    from k2d_train.stages.s1_pseudo_label import pseudo_label

    source = paths.get("audio") or str(paths["dataset"])  # audio files / manifest, or a Hugging Face dataset
    return pseudo_label(config.teacher, source, config.run_dir / "pseudo", config.pseudo_label, registry.store)


def validation(config: RunConfig, registry: Registry) -> dict:
    from k2d_train.stages.s2_validate import validate

    chunks = config.run_dir / "pseudo" / "chunks.jsonl"
    options = dataclasses.replace(config.validate, also_rules=tuple(config.ablation_rules))
    stats = validate(config.validator, chunks, config.run_dir / "validate", options, registry.store)
    return {"rules": stats, "total_chunks": sum(1 for _ in read_manifest(chunks))}


def student_init(config: RunConfig, registry: Registry) -> dict:
    from k2d_train.stages.s3_student import build_student

    teacher_dir = registry.path_of(hf_name(config.teacher))
    shape = config.student
    if (shape.encoder_layers or shape.encoder_ffn_ratio < 1) and config.distill_encoder is None:
        raise ValueError("config [student]: a smaller encoder must be trained: add a [distill_encoder] section")
    kept, teacher_params, student_params = build_student(teacher_dir, config.run_dir / "student-init",
                                                         shape.decoder_layers, shape.encoder_layers,
                                                         shape.encoder_ffn_ratio)
    return {"kept_layers": kept, "teacher_parameters": teacher_params, "student_parameters": student_params,
            "shape": shape.__dict__}


def encoder_distillation(config: RunConfig, registry: Registry) -> dict:
    from k2d_train.stages.s4_distill_encoder import distill_encoder

    return distill_encoder(registry.path_of(hf_name(config.teacher)), config.run_dir / "student-init",
                           config.run_dir / "validate" / "kept.jsonl", config.run_dir / "distill-encoder",
                           config.distill_encoder, config.run_dir / "student-encoder", registry.store,
                           teacher_cache=config.run_dir / "teacher_states", teacher_ct2=registry.path_of(config.teacher))


def student_start(config: RunConfig) -> Path:
    """The decoder stage starts from the distilled encoder when there is one."""
    trained = config.run_dir / "student-encoder"
    return trained if config.distill_encoder is not None and trained.is_dir() else config.run_dir / "student-init"


def kept_for_rule(config: RunConfig, rule: str) -> Path:
    """``kept.jsonl`` of the configured rule, or a re-filtered copy for an ablation rule."""
    from k2d_train.stages.s2_validate import kept_chunks

    if rule == config.validate.rule:
        return config.run_dir / "validate" / "kept.jsonl"
    out = config.run_dir / f"ablation-{rule}" / "kept.jsonl"
    validated = [{"audio": r.audio, **r.extra} for r in read_manifest(config.run_dir / "validate" / "validated.jsonl")]
    # validate/ and ablation-<rule>/ are siblings, so the relative audio paths stay valid
    write_manifest(out, kept_chunks(validated, rule, config.validate.alpha, ngram_n=config.validate.ngram_n,
                                    ngram_count=config.validate.ngram_count))
    return out


def distillation(config: RunConfig, paths: dict[str, Path], registry: Registry, rule: str) -> dict:
    from k2d_train.stages.s5_distill import distill

    main = rule == config.validate.rule
    folder = config.run_dir if main else config.run_dir / f"ablation-{rule}"
    final = registry.store / config.name / "hf" if main else folder / "final"
    dev = paths.get("dev_ood") or paths.get("dev")  # the kept checkpoint is the best on voices never heard
    report_dev = [paths["dev"]] if paths.get("dev_ood") and paths.get("dev") else []
    start = student_start(config)
    report = distill(registry.path_of(hf_name(config.teacher)), start, kept_for_rule(config, rule),
                     folder / "distill", config.distill, dev=dev, resume=True, final_dir=final, report_dev=report_dev,
                     teacher_cache=config.run_dir / "teacher_states", teacher_ct2=registry.path_of(config.teacher))
    if main:
        from k2d_train.stages.s3_student import register_student

        init = json.loads((config.run_dir / "stages" / "4-student.json").read_text())
        register_student(registry, config.name, final, init["student_parameters"], registry.get(config.teacher),
                         f"k2d-run:{config.source}", init["kept_layers"])
    return report


def export_models(config: RunConfig, registry: Registry) -> dict:
    from k2d_train.store.operations import export

    q = config.quantization
    student = export(registry, hf_name(config.name), q, config.name)
    teacher_name = f"{config.teacher}-{q.replace('_', '-')}"
    if teacher_name not in registry or not registry.path_of(teacher_name).is_dir():
        export(registry, config.teacher, q, teacher_name)
    # served (and evaluated) as it will be: beside its teacher for fallback, in its own language
    student.extra = {**student.extra, "teacher": registry.get(config.teacher).family or config.teacher,
                     "default_language": config.pseudo_label.language, "repetition_penalty": config.repetition_penalty}
    registry.add(student)
    return {"student": student.name, "teacher": teacher_name}


def evaluation(config: RunConfig, paths: dict[str, Path], registry: Registry) -> dict:
    """Teacher and student side by side through the serving path, in and out of domain."""
    from k2d_train.compare import Contender, compare

    exported = json.loads((config.run_dir / "stages" / "7-export.json").read_text())
    contenders = [Contender("teacher", exported["teacher"]), Contender("student", exported["student"])]
    if config.ablation_contexts:
        contenders += [Contender("teacher, short context", exported["teacher"], "2/2"),
                       Contender("student, no teacher fallback", exported["student"], fallback=False)]
    sets = {name: paths[name] for name in ("test", "test_ood") if name in paths}
    rows = compare(contenders, sets, config.evaluate, registry.store)
    (config.run_dir / "evaluate").mkdir(parents=True, exist_ok=True)
    (config.run_dir / "evaluate" / "compare.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    return {"rows": rows, "compute_type": config.evaluate.compute_type, "device": config.evaluate.device}


def ablation(config: RunConfig, paths: dict[str, Path], registry: Registry, rule: str) -> dict:
    """Same training on the chunks another rule keeps, then test MER in and out of domain: what filtering buys."""
    from k2d_train.stages.s7_evaluate import transcribe_manifest
    from k2d_train.store.convert import transformers_to_ct2

    report = distillation(config, paths, registry, rule)
    folder = config.run_dir / f"ablation-{rule}"
    transformers_to_ct2(folder / "final", folder / "ct2", config.quantization)
    scores = {}
    for name in ("test", "test_ood"):
        if name in paths:
            summary = transcribe_manifest(str(folder / "ct2"), paths[name], folder / f"{name}-hypotheses.jsonl",
                                          config.evaluate, registry.store)
            scores[name] = summary.scores
    kept = sum(1 for _ in read_manifest(folder / "kept.jsonl"))
    return {"scores": scores, "kept_chunks": kept, "steps": report["steps"]}


def model_card(config: RunConfig, registry: Registry, validated: dict, student: dict, encoder: dict | None,
               trained: dict, evaluation: dict, ablation: dict, paths: dict[str, Path]) -> dict:
    from k2d.context import ContextPolicy
    from k2d_train.model_card import write_card

    rule = config.validate.rule
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
        "test_manifests": {name: str(paths[name]) for name in ("test", "test_ood") if name in paths},
        "config": str(config.source), "language": config.pseudo_label.language,
    }
    if ablation:
        card["ablation"] = ablation
    write_card(registry.path_of(config.name), card)
    entry = registry.get(config.name)
    entry.extra = {**entry.extra, "card": card, "default_language": config.pseudo_label.language}
    registry.add(entry)
    return card
