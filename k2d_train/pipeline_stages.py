"""The body of each ``k2d run`` stage; ``pipeline.py`` decides which ones still need to run."""

from __future__ import annotations

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
    missing = [str(p) for key, p in paths.items() if key != "root" and not p.exists()]
    if missing:
        raise FileNotFoundError(f"corpus paths do not exist: {missing}")
    return {key: str(p) for key, p in paths.items()}


def pseudo_labels(config: RunConfig, paths: dict[str, Path], registry: Registry) -> dict:
    from k2d_train.stages.s1_pseudo_label import pseudo_label

    return pseudo_label(config.teacher, paths["audio"], config.run_dir / "pseudo", config.pseudo_label, registry.store)


def validation(config: RunConfig, registry: Registry) -> dict:
    from k2d_train.stages.s2_validate import validate

    chunks = config.run_dir / "pseudo" / "chunks.jsonl"
    stats = validate(config.validator, chunks, config.run_dir / "validate", config.validate, registry.store)
    return {"rules": stats, "total_chunks": sum(1 for _ in read_manifest(chunks))}


def student_init(config: RunConfig, registry: Registry) -> dict:
    from k2d_train.stages.s3_student import build_student

    teacher_dir = registry.path_of(hf_name(config.teacher))
    kept, teacher_params, student_params = build_student(teacher_dir, config.run_dir / "student-init",
                                                         config.decoder_layers)
    return {"kept_layers": kept, "teacher_parameters": teacher_params, "student_parameters": student_params}


def kept_for_rule(config: RunConfig, rule: str) -> Path:
    """``kept.jsonl`` of the configured rule, or a re-filtered copy for an ablation rule."""
    if rule == config.validate.rule:
        return config.run_dir / "validate" / "kept.jsonl"
    out = config.run_dir / f"ablation-{rule}" / "kept.jsonl"
    validated = config.run_dir / "validate" / "validated.jsonl"
    # validate/ and ablation-<rule>/ are siblings, so the relative audio paths stay valid
    rows = [r.to_json() for r in read_manifest(validated) if r.extra["delta"][rule] <= config.validate.alpha]
    write_manifest(out, rows)
    return out


def distillation(config: RunConfig, paths: dict[str, Path], registry: Registry, rule: str) -> dict:
    from k2d_train.stages.s5_distill import distill

    main = rule == config.validate.rule
    folder = config.run_dir if main else config.run_dir / f"ablation-{rule}"
    final = registry.store / config.name / "hf" if main else folder / "final"
    run = folder / "distill"
    report = distill(registry.path_of(hf_name(config.teacher)), config.run_dir / "student-init", kept_for_rule(config, rule),
                     run, config.distill, dev=paths["dev"], resume=True, final_dir=final)
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
    return {"student": student.name, "teacher": teacher_name}


def evaluation(config: RunConfig, paths: dict[str, Path], registry: Registry) -> dict:
    from k2d_train.bench import end_to_end, interleaved_forced_timings
    from k2d_train.stages.s7_evaluate import load_whisper, score

    exported = json.loads((config.run_dir / "stages" / "6-export.json").read_text())
    teacher = load_whisper(exported["teacher"], config.evaluate, registry.store)
    student = load_whisper(exported["student"], config.evaluate, registry.store)
    e2e = end_to_end(teacher, student, paths["test"], config.evaluate.language, config.evaluate.beam_size)
    refs = [row.text or "" for row in read_manifest(paths["test"])]
    timings = interleaved_forced_timings({"teacher": teacher, "student": student}, batch_size=1, tokens=100, repeats=3)
    forced = {name: timing.__dict__ for name, timing in timings.items()}
    for name in ("teacher", "student"):
        write_manifest(config.run_dir / "evaluate" / f"{name}.jsonl",
                       [{"audio": r.audio, "reference": r.text, "text": t}
                        for r, t in zip(read_manifest(paths["test"]), e2e.texts[name], strict=True)])
    return {
        "teacher": {**score(refs, e2e.texts["teacher"]), "seconds": round(e2e.teacher_seconds, 2)},
        "student": {**score(refs, e2e.texts["student"]), "seconds": round(e2e.student_seconds, 2)},
        "audio_seconds": round(e2e.audio_seconds, 2),
        "end_to_end_speedup": round(e2e.speedup, 3),
        "forced_length": forced,
        "decode_ratio": round(forced["teacher"]["decode_s"] / forced["student"]["decode_s"], 3),
        "encode_ratio": round(forced["teacher"]["encode_s"] / forced["student"]["encode_s"], 3),
        "compute_type": config.evaluate.compute_type, "device": config.evaluate.device,
    }


def ablation(config: RunConfig, paths: dict[str, Path], registry: Registry, rule: str) -> dict:
    """Same training on the chunks another rule keeps, then test MER: what filtering buys."""
    from k2d_train.stages.s7_evaluate import CT2Transcriber, transcribe_manifest
    from k2d_train.store.convert import transformers_to_ct2

    report = distillation(config, paths, registry, rule)
    folder = config.run_dir / f"ablation-{rule}"
    transformers_to_ct2(folder / "final", folder / "ct2", config.quantization)
    options = config.evaluate
    summary = transcribe_manifest(str(folder / "ct2"), paths["test"], folder / "hypotheses.jsonl", options,
                                  registry.store, CT2Transcriber(str(folder / "ct2"), options, registry.store))
    kept = sum(1 for _ in read_manifest(folder / "kept.jsonl"))
    return {**summary.scores, "kept_chunks": kept, "steps": report["steps"]}


def model_card(config: RunConfig, registry: Registry, validated: dict, student: dict, trained: dict, evaluation: dict,
               ablation: dict, paths: dict[str, Path]) -> dict:
    from k2d_train.model_card import write_card

    rule = config.validate.rule
    card = {
        "name": config.name, "teacher": config.teacher, "validator": config.validator,
        "decoder_layers_kept": len(student["kept_layers"]), "kept_layers": student["kept_layers"],
        "teacher_parameters": student["teacher_parameters"], "student_parameters": student["student_parameters"],
        "rule": rule, "alpha": config.validate.alpha, "kept_percent": validated["rules"][rule]["percent"],
        "kept_chunks": validated["rules"][rule]["chunks"], "kept_per_rule": validated["rules"],
        "steps": trained["steps"], "examples": trained["examples"],
        "evaluation": {"teacher": evaluation["teacher"], "student": evaluation["student"]},
        "speed": {k: evaluation[k] for k in ("end_to_end_speedup", "decode_ratio", "encode_ratio", "compute_type",
                                             "device")},
        "test_manifest": str(paths["test"]), "config": str(config.source),
        "language": config.pseudo_label.language,
    }
    if ablation:
        card["ablation"] = {rule: {"mer": evaluation["student"]["mer"]}, **ablation}
    write_card(registry.path_of(config.name), card)
    entry = registry.get(config.name)
    entry.extra = {**entry.extra, "card": card, "default_language": config.pseudo_label.language}
    registry.add(entry)
    return card
