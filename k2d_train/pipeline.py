"""``k2d run CONFIG.yaml``: every K²D stage in order, each stage's result reused when present.

The stages are numbered once, here (``k2d run --list-stages`` prints them); their bodies are
importable functions (``k2d_train.pipeline_stages``, which call ``k2d_train.stages.s<N>_*``). A stage
records its result in ``<run>/stages/<name>.json`` when it finishes; a rerun skips finished stages and
hands their results to the stages after them; an interrupted stage resumes from its own partial outputs
(per-file pseudo labels, encoder caches, checkpoints). ``--from-stage N`` runs N and everything after
it again; ``--to-stage N`` stops after N.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from k2d.atomic import atomic_write_text
from k2d.registry import Registry
from k2d_train.config import RunConfig, corpus_paths

Say = Callable[[str], None]


@dataclass
class Run:
    """What a stage gets: the recipe, the store, the corpus paths, and every earlier stage's result."""

    config: RunConfig
    registry: Registry
    paths: dict[str, Path]
    say: Say
    results: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    number: int
    name: str
    what: str
    action: Callable[[Run], dict]
    wanted: Callable[[RunConfig], bool] = lambda config: True
    reads: tuple[str, ...] = ()  # the config sections its result depends on (a change there makes it stale)


def _stages() -> tuple[Stage, ...]:
    from k2d_train import pipeline_stages as st

    return (
        Stage(1, "corpus", "unlabelled long-form audio + in/out-of-domain dev/test sets", st.corpus,
              reads=("corpus",)),
        Stage(2, "pseudo-label", "the teacher transcribes the audio into ≤ 30 s chunks", st.pseudo_labels,
              reads=("teacher", "pseudo_label")),
        Stage(3, "validate", "a validator re-decodes every segment; disagreeing ones are dropped", st.validation,
              reads=("validator", "validate")),
        Stage(4, "student", "the student from the teacher: its encoder, spaced decoder layers", st.student_init,
              reads=("student",)),
        Stage(5, "distill-encoder", "the encoder learns short inputs from the teacher's 30 s states",
              st.encoder_distillation, lambda c: c.distill_encoder is not None, ("distill_encoder",)),
        Stage(6, "distill", "the K²D decoder: 0.8·CE + 1.0·KL(T=2), out-of-domain dev picks the step",
              st.distillation, reads=("distill",)),
        Stage(7, "distill-ctc", "a CTC / transducer head on the distilled encoder (stage 2 of the seed method)",
              st.ctc_distillation, lambda c: c.distill_ctc is not None, ("distill_ctc",)),
        Stage(8, "export", "CTranslate2 student and teacher, ONNX CTC student, with the serving contract",
              st.export_models, reads=("name", "export")),
        Stage(9, "evaluate", "teacher vs student through the serving path, per voice group", st.evaluation,
              reads=("evaluate",)),
        Stage(10, "ablation", "the decoder again on other filtering rules' chunks (ablation_rules)", st.ablations,
              lambda c: bool(c.ablation_rules), ("ablation_rules",)),
    )


class StagePaused(Exception):
    """A stage stopped on purpose before its end (``distill.stop_after_steps``: pre-emptible jobs). It is not
    marked done, so the next run resumes it from its last checkpoint instead of reusing a half result."""


class StaleStageError(ValueError):
    """A finished stage was made with other settings than the config asks for now."""


def recipe(config: RunConfig, stage: Stage) -> dict:
    """The settings a stage's result was made with, in plain JSON (compared when the result is reused)."""
    def plain(value: object) -> object:
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    return json.loads(json.dumps({name: plain(getattr(config, name)) for name in stage.reads}, default=str))


def stage_list(config: RunConfig | None = None) -> list[str]:
    """One line per stage: number, name, what it does (and whether this config runs it)."""
    lines = []
    for stage in _stages():
        off = "" if config is None or stage.wanted(config) else "  (off in this config)"
        lines.append(f"{stage.number:>2}  {stage.name:<16} {stage.what}{off}")
    return lines


class Markers:
    """Finished stages: a JSON result per stage, written atomically."""

    def __init__(self, run_dir: Path):
        self.folder = run_dir / "stages"
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, stage: Stage) -> Path:
        path = self.folder / f"{stage.name}.json"
        legacy = self.folder / f"{stage.number}-{stage.name}.json"  # runs from before the single numbering
        if not path.exists() and legacy.exists():
            legacy.replace(path)
        return path

    def read(self, stage: Stage) -> dict | None:
        path = self.path(stage)
        return json.loads(path.read_text()) if path.exists() else None

    def write(self, stage: Stage, result: dict) -> None:
        atomic_write_text(self.path(stage), json.dumps(result, indent=2, ensure_ascii=False, default=str))

    def forget(self, stage: Stage) -> bool:
        path = self.path(stage)
        if path.exists():
            path.unlink()
            return True
        return False


def run_pipeline(config: RunConfig, registry: Registry, say: Say, from_stage: int | None = None,
                 to_stage: int | None = None) -> dict | None:
    """Run the stages, reusing finished ones; ``from_stage``: forget the results of that stage and every later
    one first. Return the model card (None when ``to_stage`` stops before the last stage)."""
    from k2d_train.pipeline_stages import model_card

    stages = _stages()
    last = max(s.number for s in stages)
    to_stage = last if to_stage is None else to_stage
    if not 1 <= (from_stage or 1) <= to_stage <= last:
        raise ValueError(f"stages run from 1 to {last}: --from-stage {from_stage} --to-stage {to_stage} is not a range")
    for warning in config.warnings():
        say(f"warning: {warning}")
    run = Run(config, registry, corpus_paths(config), say)
    markers = Markers(config.run_dir)
    for stage in (s for s in stages if from_stage is not None and s.number >= from_stage):
        if markers.forget(stage):
            say(f"[stage {stage.number}] {stage.name}: result forgotten (--from-stage {from_stage})")
    for stage in stages:
        if stage.number > to_stage:
            break
        if not stage.wanted(config):
            continue
        try:
            run.results[stage.name] = _run_stage(stage, run, markers, say)
        except StagePaused as paused:
            say(f"[stage {stage.number}] {stage.name}: paused ({paused}); run the same command again to resume")
            return None
    if to_stage < last:
        say(f"stopped after stage {to_stage} (--to-stage)")
        return None
    card = model_card(run)
    say(f"student {config.name} registered (role student): {registry.path_of(config.name)}")
    return card


def _run_stage(stage: Stage, run: Run, markers: Markers, say: Say) -> dict:
    done, wanted = markers.read(stage), recipe(run.config, stage)
    if done is not None:
        made_with = done.get("recipe", wanted)  # results from before recipes were recorded: trusted
        changed = sorted(k for k in wanted if made_with.get(k) != wanted[k])
        if changed:
            raise StaleStageError(
                f"stage {stage.number} ({stage.name}) was made with other {', '.join(changed)} settings than this "
                f"config's: run it again with --from-stage {stage.number}, or undo the change")
        say(f"[stage {stage.number}] {stage.name}: done before, reusing")
        return done
    say(f"[stage {stage.number}] {stage.name}")
    started = time.perf_counter()
    result = stage.action(run)
    # wall time per stage: what a newcomer's `make demo` spends where (docs/scaling.md uses it)
    result = {**result, "stage_seconds": round(time.perf_counter() - started, 1), "recipe": wanted}
    say(f"[stage {stage.number}] {stage.name}: {result['stage_seconds']:.0f} s")
    markers.write(stage, result)
    return result
