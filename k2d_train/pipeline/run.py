"""``k2d run CONFIG.yaml``: every K²D stage in order, each stage's result reused while its recipe holds.

The stages are numbered and wired once, here: what each reads from the recipe, which stages' artifacts it
consumes, which run folders it owns (``k2d_train.pipeline.stage_graph`` turns that into fingerprints; ``k2d run
--list-stages`` prints each stage's state and why). Their bodies are importable functions
(``k2d_train.pipeline.stage_bodies``, which call ``k2d_train.stages.s<N>_*``). A finished stage records its result
and fingerprint in ``<run>/stages/<name>.json``; a rerun reuses it while the fingerprint holds, and re-runs
exactly the stages a recipe change reaches (clearing their folders first). An interrupted stage resumes
from its own partial outputs (per-file pseudo labels, encoder caches, checkpoints) when its settings did
not change. ``--from-stage N`` runs N and everything after it again; ``--to-stage N`` stops after N.
"""

from __future__ import annotations

import dataclasses
import time

from k2d.registry import Registry
from k2d_train.pipeline.config import RunConfig, corpus_paths
from k2d_train.pipeline.stage_graph import (
    LOCATIONS,
    Markers,
    ReadRecorder,
    Run,
    Say,
    Stage,
    StagePaused,
    StageState,
    clear_owned,
    plan,
)


def _stages() -> tuple[Stage, ...]:
    from k2d_train.pipeline import stage_bodies as st

    return (
        Stage(1, "corpus", "unlabelled long-form audio + in/out-of-domain dev/test sets", st.corpus,
              reads=("corpus",), owns=("corpus",)),
        Stage(2, "pseudo-label", "the teacher transcribes the audio into ≤ 30 s chunks", st.pseudo_labels,
              reads=("teacher", "pseudo_label"), inputs=("corpus",), owns=("pseudo",)),
        Stage(3, "validate", "a validator re-decodes every segment; disagreeing ones are dropped", st.validation,
              reads=("validator", "validate", "ablation_rules"), inputs=("pseudo-label",), owns=("validate",)),
        Stage(4, "student", "the student from the teacher: its encoder, spaced decoder layers", st.student_init,
              reads=("teacher", "student"), owns=("student-init",)),
        Stage(5, "distill-encoder", "the encoder learns short inputs from the teacher's 30 s states",
              st.encoder_distillation, lambda c: c.distill_encoder is not None, ("teacher", "distill_encoder"),
              inputs=("corpus", "validate", "student"), owns=("distill-encoder", "student-encoder")),
        Stage(6, "distill", "the K²D decoder: 0.8·CE + 1.0·KL(T=2), out-of-domain dev picks the step",
              st.distillation, reads=("name", "teacher", "validate", "distill"),
              inputs=("corpus", "validate", "student", "distill-encoder"), owns=("distill",)),
        Stage(7, "distill-ctc", "a CTC / transducer head on the distilled encoder (stage 2 of the seed method)",
              st.ctc_distillation, lambda c: c.distill_ctc is not None, ("distill_ctc",),
              inputs=("corpus", "validate", "student", "distill-encoder"), owns=("distill-ctc", "ctc-final")),
        Stage(8, "export", "CTranslate2 student and teacher, ONNX CTC student, with the serving contract",
              # distill: trim_vocabulary keeps the tokens of the labels in the script the student learnt
              st.export_models, reads=("name", "teacher", "export", "pseudo_label", "distill_ctc", "distill"),
              inputs=("validate", "distill", "distill-ctc")),
        Stage(9, "evaluate", "teacher vs student through the serving path, per voice group", st.evaluation,
              # distill_encoder: the served context the short-context teacher row (ablation_contexts) copies
              reads=("evaluate", "ablation_contexts", "distill_ctc", "distill_encoder"), inputs=("corpus", "export"),
              owns=("evaluate",)),
        Stage(10, "ablation", "the decoder again on other filtering rules' chunks (ablation_rules)", st.ablations,
              lambda c: bool(c.ablation_rules), ("ablation_rules", "teacher", "validate", "distill", "evaluate",
                                                 "export"),
              inputs=("corpus", "validate", "student", "distill-encoder"), owns=("ablation-*",)),
    )


def stage_list(config: RunConfig | None = None) -> list[str]:
    """One line per stage: number, name, what it does, and (given a recipe) whether it is done, stale, to
    run or off, and why. Imports no torch."""
    stages = _stages()
    states = plan(config, stages, Markers(config.run_dir)) if config is not None else []
    lines = []
    for index, stage in enumerate(stages):
        line = f"{stage.number:>2}  {stage.name:<16} {stage.what}"
        if states:
            state = states[index]
            line += f"\n    {state.why if state.state == 'off' else state.state}" + \
                (f" ({state.why})" if state.why and state.state != "off" else "")
        lines.append(line)
    return lines


def run_pipeline(config: RunConfig, registry: Registry, say: Say, from_stage: int | None = None,
                 to_stage: int | None = None) -> dict | None:
    """Run the stages, reusing finished ones; ``from_stage``: forget the results of that stage and every later
    one first. Return the model card (None when ``to_stage`` stops before the last stage)."""
    from k2d_train.pipeline.stage_bodies import model_card

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
    for state in plan(config, stages, markers):
        stage = state.stage
        if stage.number > to_stage:
            break
        if state.state == "off":
            continue
        try:
            run.results[stage.name] = _run_stage(state, run, markers, say)
        except StagePaused as paused:
            say(f"[stage {stage.number}] {stage.name}: paused ({paused}); run the same command again to resume")
            return None
    if to_stage < last:
        say(f"stopped after stage {to_stage} (--to-stage)")
        return None
    card = model_card(run)
    say(f"student {config.name} registered (role student): {registry.path_of(config.name)}")
    return card


def _run_stage(state: StageState, run: Run, markers: Markers, say: Say) -> dict:
    """Reuse a finished result made with this recipe; otherwise run the stage (clearing its folders first when
    they were made with other settings) and record its result with the fingerprint it was made with."""
    stage, config = state.stage, run.config
    if state.state == "done":
        say(f"[stage {stage.number}] {stage.name}: done before, reusing")
        return markers.read(stage)
    started = markers.read(stage, ".started")
    if state.state == "stale" or (started is not None and started.get("fingerprint") != state.fingerprint):
        removed = clear_owned(config.run_dir, stage)
        say(f"[stage {stage.number}] {stage.name}: made with other settings ({state.why or 'an interrupted run'}), "
            f"running it again" + (f"; cleared {', '.join(removed)}" if removed else ""))
        markers.forget(stage)
    else:
        say(f"[stage {stage.number}] {stage.name}")
    markers.write(stage, {"fingerprint": state.fingerprint}, ".started")
    recorder = ReadRecorder(config)
    clock = time.perf_counter()
    result = stage.action(dataclasses.replace(run, config=recorder))
    touched = sorted(recorder.touched - LOCATIONS)
    undeclared = sorted(set(touched) - set(stage.reads))
    if undeclared:  # a stage reading a field it does not declare would be reused after that field changes
        say(f"[stage {stage.number}] {stage.name}: warning: reads {undeclared} without declaring them")
    # wall time per stage: what a newcomer's `make demo` spends where (docs/scaling.md uses it)
    result = {**result, "stage_seconds": round(time.perf_counter() - clock, 1), "recipe": state.recipe,
              "fingerprint": state.fingerprint, "inputs": state.inputs, "touched": touched}
    say(f"[stage {stage.number}] {stage.name}: {result['stage_seconds']:.0f} s")
    markers.write(stage, result)
    markers.forget(stage, ".started")
    return result
