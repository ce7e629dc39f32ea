"""A ``k2d run`` recipe (YAML) as typed options for every stage, checked before anything runs.

Each section maps onto one stage's options dataclass; unknown keys and contradictory options are
refused with a message that says what to write instead. ``configs/*.yaml`` are the shipped recipes
(``configs/own-data.yaml``: your own recordings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from k2d.registry import check_name
from k2d_train.pipeline.options import (
    CTCOptions,
    DistillOptions,
    EncoderDistillOptions,
    EvaluateOptions,
    ExportOptions,
    PseudoLabelOptions,
    StudentShape,
    ValidateOptions,
)

# what stage 9 reports: in domain; out of domain; the same, noisier; held-out clear voices, plain Mandarin
TEST_SETS = ("test", "test_ood", "test_ood_noisy", "test_ood_clear")
SETS = (*TEST_SETS, "dev", "dev_ood")
SECTIONS = {"extends", "name", "run_dir", "teacher", "validator", "corpus", "pseudo_label", "validate", "student",
            "distill_encoder", "distill", "distill_ctc", "export", "evaluate", "ablation_rules", "ablation_contexts"}


def section(cls, values: dict | None, where: str, build=None):
    """``values`` as ``cls`` (or ``build(values)``); unknown keys are an error that lists the known ones, a bad
    value one that names its YAML path (``distill.max_steps: Input should be a valid integer, got 'abc'``)."""
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(f"config [{where}]: expected a mapping of options, got {values!r}")
    if build is None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config [{where}]: unknown keys {unknown}; known: {sorted(known)}")
    try:
        return build(values) if build is not None else cls(**values)
    except ValidationError as err:
        problems = [f"{'.'.join([where, *map(str, e['loc'])])}: {e['msg']}, got {e['input']!r}" if e["loc"] else
                    f"{where}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()]
        raise ValueError(f"config: {'; '.join(problems)}") from None


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
    distill_ctc: CTCOptions | None = None  # a CTC / transducer student on the distilled encoder (stage 7)
    export: ExportOptions = field(default_factory=ExportOptions)
    ablation_rules: list[str] = field(default_factory=list)
    ablation_contexts: bool = False  # also measure the untrained short-context rows of the ablation table
    source: Path | None = None

    @property
    def quantization(self) -> str:
        return self.export.quantization

    @property
    def ctc_name(self) -> str:
        """The registry name of the CTC / transducer student (stage 7)."""
        return f"{self.name}-{self.distill_ctc.head}{'-streaming' if self.distill_ctc.streaming else ''}"

    @property
    def base(self) -> Path:
        """The folder a config's relative paths start from: its file's (the working directory for one built in code)."""
        return self.source.parent if self.source else Path.cwd()

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
        raw = read_recipe(path)
        unknown = sorted(set(raw) - SECTIONS)
        if unknown:
            raise ValueError(f"config {path}: unknown sections {unknown}; known: {sorted(SECTIONS)}")
        base = path.parent
        encoder, ctc = raw.get("distill_encoder"), raw.get("distill_ctc")
        return cls(
            name=check_name(raw.get("name", "k2d-student"), f"config {path}: name"),  # <store>/<name>/hf
            run_dir=(base / raw.get("run_dir", f"../runs/{path.stem}")).resolve(),
            teacher=raw.get("teacher", "whisper-base"),
            validator=raw.get("validator", "whisper-base"),
            corpus=raw.get("corpus", {"synth": {}}),
            pseudo_label=section(PseudoLabelOptions, raw.get("pseudo_label"), "pseudo_label"),
            validate=section(ValidateOptions, raw.get("validate"), "validate"),
            distill=section(DistillOptions, raw.get("distill"), "distill"),
            evaluate=section(EvaluateOptions, raw.get("evaluate"), "evaluate", EvaluateOptions.from_section),
            student=section(StudentShape, raw.get("student"), "student"),
            distill_encoder=section(EncoderDistillOptions, encoder, "distill_encoder") if encoder is not None else None,
            distill_ctc=section(CTCOptions, ctc, "distill_ctc") if ctc is not None else None,
            export=section(ExportOptions, raw.get("export"), "export"),
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
        if (self.student.encoder_layers or self.student.encoder_ffn_ratio < 1) and self.distill_encoder is None:
            raise ValueError("config [student]: a smaller encoder must be trained: add a [distill_encoder] section")
        return self

    def warnings(self) -> list[str]:
        """Legal but probably unintended: said before the run starts."""
        out = []
        rules = {self.validate.rule, *self.ablation_rules} - {"none", "ngram"}
        if rules and self.validator == self.teacher:
            out.append(f"the validator is the teacher itself ({self.teacher}): rules {sorted(rules)} then measure "
                       "the teacher's agreement with itself, not a second opinion (K²D validates with another model)")
        return out


TOP_LEVEL = {  # the recipe's own keys (the sections below have their tables)
    "extends": ("", "another recipe beside this one to start from, section by section"),
    "name": ("k2d-student", "the student's name in the model store"),
    "run_dir": ("../runs/<recipe name>", "where the stages write, relative to the recipe"),
    "teacher": ("whisper-base", "the teacher (a store name; any Whisper the store can import)"),
    "validator": ("whisper-base", "the second model that re-decodes segments (stage 3)"),
    "corpus": ("{synth: {}}", "`synth:` options of the offline data engine, or `audio`/`dataset`, `test`, `test_ood`, "
               "`dev`, `dev_ood` manifests of your own data"),
    "ablation_rules": ("[]", "other filtering rules to train the decoder on again (stage 10)"),
    "ablation_contexts": ("false", "stage 9 also races the untrained teacher at the student's own context, and "
                                   "the student without fallback"),
}
SECTION_OPTIONS = {"pseudo_label": PseudoLabelOptions, "validate": ValidateOptions, "student": StudentShape,
                   "distill_encoder": EncoderDistillOptions, "distill": DistillOptions, "distill_ctc": CTCOptions,
                   "export": ExportOptions, "evaluate": EvaluateOptions}


def reference() -> str:
    """Every recipe key with its default and the comment beside it in the source (``docs/recipe.md`` is this
    text: ``k2d settings --recipe``; a test keeps the two equal)."""
    from k2d.policy import DecodePolicy

    lines = ["# Recipe reference", "", "Every key a `k2d run` recipe (YAML) may hold. Generated from "
             "`k2d_train/pipeline/options.py` and `k2d_train/pipeline/config.py` by `k2d settings --recipe`; "
             "do not edit by hand. "
             "Unknown keys and bad values are refused with their path (`distill.max_steps: ...`).", "",
             "| key | default | what it does |", "|---|---|---|"]
    lines += [f"| `{key}` | `{default}` | {what} |" if default else f"| `{key}` | | {what} |"
              for key, (default, what) in TOP_LEVEL.items()]
    for name, cls in SECTION_OPTIONS.items():
        lines += ["", f"## `{name}:`", "", "| key | default | what it does |", "|---|---|---|"]
        for owner in (cls, DecodePolicy) if cls is EvaluateOptions else (cls,):
            notes = _comments(owner)
            for item in dataclasses.fields(owner):
                if item.name == "policy" and owner is EvaluateOptions:
                    continue
                default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
                lines.append(f"| `{item.name}` | `{_shown(default)}` | {notes.get(item.name, '')} |")
    return "\n".join(lines) + "\n"


def _shown(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else \
        str(list(value)) if isinstance(value, tuple) else str(value)


def _comments(cls) -> dict[str, str]:
    """The comment beside (and the comment lines just above) each field in ``cls``'s source."""
    import inspect
    import re

    notes: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        found = re.match(r"    (\w+): [^#]*?(?:#\s*(.*))?$", line)
        if found:
            notes[found.group(1)] = " ".join([*pending, found.group(2) or ""]).strip().replace("|", "/")
        pending = []
    return notes


def read_recipe(path: Path) -> dict:
    """A recipe's YAML; ``extends: other.yaml`` (beside it) starts from that recipe, section by section: a key
    this file sets replaces the other's, so a variant says only what differs."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if Path(base).name == path.name:
        raise ValueError(f"config {path}: extends itself")
    merged = read_recipe(path.parent / base)
    for key, value in raw.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def corpus_paths(config: RunConfig) -> dict[str, Path]:
    """The unlabelled audio and the labelled sets: in-domain and out-of-domain dev and test."""
    if "synth" in config.corpus:
        root = config.run_dir / "corpus"
        return {"root": root, "audio": root / "lectures.jsonl", "extra_audio": root / "encoder_audio.jsonl",
                **{s: root / f"{s}.jsonl" for s in SETS}}
    base = config.base
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
