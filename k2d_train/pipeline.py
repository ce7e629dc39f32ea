"""``k2d run CONFIG.yaml``: every K²D stage in order, each stage's output reused when present.

Stages (icefall-style numbered, importable functions in ``k2d_train.stages``): 1 corpus,
2 pseudo-label, 3 validate, 4 student, 5 distill-encoder (optional: short context and/or a smaller
encoder), 6 distill (K²D decoder), 7 export, 8 evaluate in and out of domain (+ optional
ablations), then the model card. A stage records its result in ``<run>/stages/<n>-<name>.json``
when it finishes; a rerun skips finished stages, and an interrupted stage resumes from its own
partial outputs (per-file pseudo labels, encoder caches, checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from k2d.atomic import atomic_write_text
from k2d.registry import Registry
from k2d_train.stages.s1_pseudo_label import PseudoLabelOptions
from k2d_train.stages.s2_validate import ValidateOptions
from k2d_train.stages.s4_distill_encoder import EncoderDistillOptions
from k2d_train.stages.s5_distill import DistillOptions
from k2d_train.stages.s7_evaluate import EvaluateOptions

Say = Callable[[str], None]
SETS = ("test", "test_ood", "dev", "dev_ood")


def _options(cls, section: dict | None, where: str):
    section = section or {}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"config [{where}]: unknown keys {unknown}; known: {sorted(known)}")
    return cls(**section)


@dataclass
class StudentShape:
    decoder_layers: int = 2
    encoder_layers: int | None = None  # fewer encoder layers (needs distill_encoder)
    encoder_ffn_ratio: float = 1.0  # thinner encoder FFN (needs distill_encoder)


@dataclass
class RunConfig:
    name: str
    run_dir: Path
    teacher: str
    validator: str
    corpus: dict
    pseudo_label: PseudoLabelOptions
    validate: ValidateOptions
    distill: DistillOptions
    evaluate: EvaluateOptions
    student: StudentShape = field(default_factory=StudentShape)
    distill_encoder: EncoderDistillOptions | None = None
    quantization: str = "int8"
    repetition_penalty: float = 1.0  # the student's decoding penalty, served from its registry entry
    ablation_rules: list[str] = field(default_factory=list)
    ablation_contexts: bool = False  # also measure the untrained short-context rows of the ablation table
    source: Path | None = None

    @property
    def decoder_layers(self) -> int:
        return self.student.decoder_layers

    def packaged_models(self) -> list[str]:
        """The teacher and validator, where the package index ships them (`k2d models fetch` names)."""
        from k2d_train.store.catalog import CATALOG

        return sorted({self.teacher, self.validator} & set(CATALOG))

    def use_device(self, device: str) -> None:
        """Run the CTranslate2 stages (pseudo-label, validate, evaluate) on ``cpu``, ``cuda`` or ``auto``
        (a GPU when CTranslate2 sees one); distillation already takes a GPU when torch sees one."""
        if device == "auto":
            from k2d.engine import cuda_available

            device = "cuda" if cuda_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {device!r}; choose auto, cpu or cuda")
        for options in (self.pseudo_label, self.validate, self.evaluate):
            options.device = device

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        allowed = {"name", "run_dir", "teacher", "validator", "corpus", "pseudo_label", "validate", "student",
                   "distill_encoder", "distill", "export", "evaluate", "ablation_rules", "ablation_contexts"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"config {path}: unknown sections {unknown}; known: {sorted(allowed)}")
        base = path.parent
        encoder = raw.get("distill_encoder")
        return cls(
            name=raw.get("name", "k2d-student"),
            run_dir=(base / raw.get("run_dir", f"../runs/{path.stem}")).resolve(),
            teacher=raw.get("teacher", "whisper-base"),
            validator=raw.get("validator", "whisper-base"),
            corpus=raw.get("corpus", {"synth": {}}),
            pseudo_label=_options(PseudoLabelOptions, raw.get("pseudo_label"), "pseudo_label"),
            validate=_options(ValidateOptions, raw.get("validate"), "validate"),
            distill=_options(DistillOptions, raw.get("distill"), "distill"),
            evaluate=_options(EvaluateOptions, raw.get("evaluate"), "evaluate"),
            student=_options(StudentShape, raw.get("student"), "student"),
            distill_encoder=_options(EncoderDistillOptions, encoder, "distill_encoder") if encoder is not None else None,
            quantization=(raw.get("export") or {}).get("quantization", "int8"),
            repetition_penalty=float((raw.get("export") or {}).get("repetition_penalty", 1.0)),
            ablation_rules=list(raw.get("ablation_rules") or []),
            ablation_contexts=bool(raw.get("ablation_contexts", False)),
            source=path.resolve(),
        ).checked()

    def checked(self) -> RunConfig:
        """Refuse options that contradict each other instead of letting one silently do nothing."""
        if self.distill.use_nbest and self.pseudo_label.nbest < 2:
            raise ValueError("config: distill.use_nbest needs pseudo_label.nbest >= 2 (no N-best labels exist otherwise)")
        if self.pseudo_label.nbest > 1 and not self.distill.use_nbest:
            raise ValueError(f"config: pseudo_label.nbest is {self.pseudo_label.nbest} but distill.use_nbest is false: "
                             "the teacher would decode N-best lists that no stage reads (set use_nbest: true or nbest: 1)")
        return self

    def warnings(self) -> list[str]:
        """Legal but probably unintended: said before the run starts."""
        out = []
        rules = {self.validate.rule, *self.ablation_rules} - {"none", "ngram"}
        if rules and self.validator == self.teacher:
            out.append(f"the validator is the teacher itself ({self.teacher}): rules {sorted(rules)} then measure "
                       "the teacher's agreement with itself, not a second opinion (K²D validates with another model)")
        return out


class Stages:
    """Bookkeeping of finished stages: a JSON result per stage, written atomically."""

    def __init__(self, run_dir: Path, say: Say):
        self.folder, self.say = run_dir / "stages", say
        self.folder.mkdir(parents=True, exist_ok=True)

    def run(self, number: int, name: str, action: Callable[[], dict]) -> dict:
        marker = self.folder / f"{number}-{name}.json"
        if marker.exists():
            self.say(f"[stage {number}] {name}: done before, reusing")
            return json.loads(marker.read_text())
        self.say(f"[stage {number}] {name}")
        started = time.perf_counter()
        result = action()
        # wall time per stage: what a newcomer's `make demo` spends where (docs/scaling.md uses it)
        result = {**result, "stage_seconds": round(time.perf_counter() - started, 1)}
        self.say(f"[stage {number}] {name}: {result['stage_seconds']:.0f} s")
        atomic_write_text(marker, json.dumps(result, indent=2, ensure_ascii=False, default=str))
        return result


def corpus_paths(config: RunConfig) -> dict[str, Path]:
    """The unlabelled audio and the labelled sets: in-domain and out-of-domain dev and test."""
    if "synth" in config.corpus:
        root = config.run_dir / "corpus"
        return {"root": root, "audio": root / "lectures.jsonl", **{s: root / f"{s}.jsonl" for s in SETS}}
    base = config.source.parent if config.source else Path.cwd()
    paths = {}
    for key in ("audio", "dataset", *SETS):
        value = config.corpus.get(key)
        if value is not None:
            paths[key] = Path(value) if key == "dataset" and not (base / value).exists() else (base / value).resolve()
    missing = [key for key in ("test", "test_ood") if key not in paths]
    if missing or not ({"audio", "dataset"} & set(paths)):
        raise ValueError(f"config [corpus] needs audio (or dataset) and {', '.join(('test', 'test_ood'))}: an "
                         "out-of-domain test set (voices and sentences never in training) is required")
    return paths


def run_pipeline(config: RunConfig, registry: Registry, say: Say) -> dict:
    from k2d_train import pipeline_stages as st

    for warning in config.warnings():
        say(f"warning: {warning}")
    stages = Stages(config.run_dir, say)
    paths = corpus_paths(config)
    stages.run(1, "corpus", lambda: st.corpus(config, paths))
    stages.run(2, "pseudo-label", lambda: st.pseudo_labels(config, paths, registry))
    validated = stages.run(3, "validate", lambda: st.validation(config, registry))
    student = stages.run(4, "student", lambda: st.student_init(config, registry))
    encoder = stages.run(5, "distill-encoder", lambda: st.encoder_distillation(config, registry)) \
        if config.distill_encoder is not None else None
    trained = stages.run(6, "distill", lambda: st.distillation(config, paths, registry, config.validate.rule))
    stages.run(7, "export", lambda: st.export_models(config, registry))
    evaluation = stages.run(8, "evaluate", lambda: st.evaluation(config, paths, registry))
    for rule in config.ablation_rules:
        stages.run(8, f"ablation-{rule}", lambda rule=rule: st.ablation(config, paths, registry, rule))
    ablation = {rule: json.loads((stages.folder / f"8-ablation-{rule}.json").read_text())
                for rule in config.ablation_rules}
    card = st.model_card(config, registry, validated, student, encoder, trained, evaluation, ablation, paths)
    say(f"student {config.name} registered (role student): {registry.path_of(config.name)}")
    return card
