"""Recipes: sections checked, contradictions refused, variants that say only what differs."""

from __future__ import annotations

import pytest

from k2d_train.pipeline.config import RunConfig
from tests.conftest import REPO


def test_a_variant_extends_its_base_recipe_section_by_section(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nrun_dir: runs/x\ndistill: {max_steps: 180, batch_size: 4}\n")
    (tmp_path / "variant.yaml").write_text("extends: base.yaml\nname: variant\ndistill: {max_steps: 40}\n")
    variant = RunConfig.load(tmp_path / "variant.yaml")
    assert (variant.name, variant.distill.max_steps, variant.distill.batch_size) == ("variant", 40, 4)
    assert variant.run_dir == (tmp_path / "runs/x").resolve()
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match="extends itself"):
        RunConfig.load(tmp_path / "loop.yaml")


def test_the_ctc_recipe_is_the_demo_plus_stage_7():
    demo, ctc = RunConfig.load(REPO / "configs/demo.yaml"), RunConfig.load(REPO / "configs/ctc.yaml")
    assert demo.distill_ctc is None and ctc.distill_ctc.head == "ctc" and ctc.distill_ctc.streaming
    assert (ctc.run_dir, ctc.name, ctc.distill_encoder) == (demo.run_dir, demo.name, demo.distill_encoder)


def test_every_shipped_recipe_loads():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert RunConfig.load(path).name, path


def tiny_recipe(tmp_path, extra: str = "", name: str = "run.yaml") -> RunConfig:
    path = tmp_path / name
    path.write_text((REPO / "configs/tiny.yaml").read_text().replace("run_dir: ../runs/tiny", "run_dir: run") + extra)
    return RunConfig.load(path)


def fake_pipeline(monkeypatch, ran: list[int]):
    """The real stage graph (reads, inputs, owned folders) with bodies that only note that they ran."""
    import dataclasses

    from k2d_train.pipeline import run as pipeline

    real = pipeline._stages()

    def body(stage):
        def action(run):
            ran.append(stage.number)
            for pattern in stage.owns:
                (run.config.run_dir / pattern.replace("*", "x")).mkdir(parents=True, exist_ok=True)
            getattr(run.config, stage.reads[0]) if stage.reads else None
            return {"ok": True}
        return action

    monkeypatch.setattr(pipeline, "_stages", lambda: tuple(dataclasses.replace(s, action=body(s)) for s in real))
    return pipeline


@pytest.mark.parametrize(("change", "reruns"), [
    ("distill_encoder: {max_steps: 3, batch_size: 2, save_every: 2}", [5, 6, 8, 9]),
    ("evaluate: {beam_size: 2, language: zh}", [9]),
    ("distill: {max_steps: 3, batch_size: 2, warmup_steps: 1, eval_every: 2, save_every: 2, dev_limit: 2, "
     "use_nbest: true}", [6, 8, 9]),
    ("validate: {rule: ngram, alpha: 0.4}", [3, 5, 6, 8, 9]),
    ("student: {decoder_layers: 4}", [4, 5, 6, 8, 9]),
    ("distill: {max_steps: 2, batch_size: 2, warmup_steps: 1, eval_every: 2, save_every: 2, dev_limit: 2, "
     "use_nbest: true, freeze_embeddings: true}", [6, 8, 9]),
    ("distill: {max_steps: 2, batch_size: 2, warmup_steps: 1, eval_every: 2, save_every: 5, dev_limit: 2, "
     "use_nbest: true, stop_after_steps: 9}\npseudo_label: {language: zh, beam_size: 2, nbest: 2, device: cpu, "
     "batch_size: 1}", []),  # runtime knobs: how fast or where, not what
])
def test_a_recipe_change_re_runs_exactly_the_stages_that_depend_on_it(tmp_path, monkeypatch, change, reruns):
    ran: list[int] = []
    pipeline = fake_pipeline(monkeypatch, ran)
    lines: list[str] = []
    assert pipeline.run_pipeline(tiny_recipe(tmp_path), None, lines.append, to_stage=9) is None
    assert ran == [1, 2, 3, 4, 5, 6, 8, 9]  # 7 (distill_ctc) is off in the tiny recipe
    changed = tiny_recipe(tmp_path, "\n" + change + "\n", "changed.yaml")
    listing = "\n".join(pipeline.stage_list(changed))
    assert listing.count("\n    stale") == len(reruns), listing
    ran.clear()
    pipeline.run_pipeline(changed, None, lines.append, to_stage=9)
    assert ran == reruns
    assert sum("made with other settings" in line for line in lines) == len(reruns)
    ran.clear()
    pipeline.run_pipeline(changed, None, lines.append, to_stage=9)
    assert ran == []  # and now the changed recipe's results are reused


def test_an_option_added_later_leaves_the_runs_made_before_it_standing(tmp_path):
    """A run finished before ``distill.freeze_embeddings`` existed recorded a recipe without it: at its default
    (what that run did) the field stays out of the recipe, so upgrading k2d re-trains no finished stage 6."""
    from k2d_train.pipeline.run import _stages
    from k2d_train.pipeline.stage_graph import recipe

    distill = next(stage for stage in _stages() if stage.name == "distill")
    before = recipe(tiny_recipe(tmp_path), distill)["distill"]
    frozen = tiny_recipe(tmp_path, "\ndistill: {max_steps: 2, batch_size: 2, warmup_steps: 1, eval_every: 2, "
                                   "save_every: 2, dev_limit: 2, use_nbest: true, freeze_embeddings: true}\n", "x.yaml")
    assert "freeze_embeddings" not in before and "max_steps" in before
    assert recipe(frozen, distill)["distill"] == {**before, "freeze_embeddings": True}


def test_a_stale_stage_says_why_and_clears_its_own_folders_first(tmp_path, monkeypatch):
    """Stage 6 resumes from checkpoints in run/distill: after a change they must be gone, or the new recipe would
    resume the old model; the folders of stages the change does not reach stay."""
    ran: list[int] = []
    pipeline = fake_pipeline(monkeypatch, ran)
    config = tiny_recipe(tmp_path)
    pipeline.run_pipeline(config, None, print, to_stage=9)
    checkpoint = config.run_dir / "distill" / "checkpoint-2"
    checkpoint.mkdir()
    changed = tiny_recipe(tmp_path, "\ndistill: {max_steps: 3, batch_size: 2, use_nbest: true}\n", "changed.yaml")
    listing = pipeline.stage_list(changed)
    why = "stale (changed: distill.dev_limit, distill.eval_every, distill.max_steps, distill.warmup_steps)"
    assert why in listing[5], listing[5]
    assert why in listing[7], listing[7]  # export reads distill too (trim_vocabulary: the labels' script)
    lines: list[str] = []
    pipeline.run_pipeline(changed, None, lines.append, to_stage=9)
    assert not checkpoint.exists() and (config.run_dir / "student-encoder").is_dir()
    assert any("cleared distill" in line for line in lines)


def test_an_interrupted_stage_is_resumed_only_with_the_settings_it_started_with(tmp_path, monkeypatch):
    from k2d_train.pipeline import run as pipeline
    from k2d_train.pipeline.stage_graph import Stage

    config = tiny_recipe(tmp_path)

    def crash(run):
        (run.config.run_dir / "distill" / "checkpoint-1").mkdir(parents=True)
        raise KeyboardInterrupt

    stage = Stage(6, "distill", "test", crash, reads=("distill",), owns=("distill",))
    later = Stage(7, "export", "test", lambda run: {})  # to_stage=6 stops before the model card
    monkeypatch.setattr(pipeline, "_stages", lambda: (stage, later))
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(config, None, print, to_stage=6)
    seen = []
    resumed = Stage(6, "distill", "test", lambda run: seen.append(
        (run.config.run_dir / "distill" / "checkpoint-1").exists()) or {}, reads=("distill",), owns=("distill",))
    monkeypatch.setattr(pipeline, "_stages", lambda: (resumed, later))
    pipeline.run_pipeline(config, None, print, to_stage=6)
    assert seen == [True]  # same settings: its checkpoint is resumed
    pipeline.Markers(config.run_dir).forget(resumed)
    (config.run_dir / "distill" / "checkpoint-1").mkdir(exist_ok=True)
    pipeline.Markers(config.run_dir).write(resumed, {"fingerprint": "from-other-settings"}, ".started")
    pipeline.run_pipeline(config, None, print, to_stage=6)
    assert seen == [True, False]  # other settings: started clean


def test_listing_the_stages_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; from k2d_train.pipeline.config import RunConfig; from k2d_train.pipeline.run import stage_list; "
            "from pathlib import Path; print(len(stage_list(RunConfig.load(Path('configs/scale.yaml'))))); "
            "print(sorted(m for m in ('torch', 'transformers', 'ctranslate2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["10", "[]"]


def test_a_paused_stage_is_not_marked_done_and_runs_again_next_time(tmp_path, monkeypatch):
    """``distill.stop_after_steps`` pauses stage 6 after a checkpoint: the next ``k2d run`` must resume it, not
    reuse a result that has no final model (issue 31 defect)."""
    from k2d_train.pipeline import run as pipeline
    from k2d_train.pipeline.run import Markers, Stage, StagePaused

    config = tiny_recipe(tmp_path)
    attempts = []

    def distill(run):
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise StagePaused("2 of 4 steps, checkpointed")
        return {"steps": 4}

    stage = Stage(6, "distill", "test", distill, reads=("distill",))
    later = Stage(7, "export", "test", lambda run: {}, reads=())
    monkeypatch.setattr(pipeline, "_stages", lambda: (stage, later))
    lines: list[str] = []
    assert pipeline.run_pipeline(config, None, lines.append, to_stage=6) is None
    assert "paused (2 of 4 steps, checkpointed)" in lines[-1] and Markers(config.run_dir).read(stage) is None
    pipeline.run_pipeline(config, None, lines.append, to_stage=6)
    assert attempts == [0, 1] and Markers(config.run_dir).read(stage)["steps"] == 4


def test_a_curve_size_is_a_prefix_of_the_kept_chunks_in_lecture_order(tmp_path):
    """Every learning-curve size trains on what the smaller sizes trained on, plus more (never another sample)."""
    import json

    from k2d_train.experiments.curve import prefix_by_hours

    kept = tmp_path / "kept.jsonl"
    rows = [{"audio": f"lectures/lecture_{i // 3:04d}.flac", "id": f"c{i}", "start": 20.0 * (i % 3),
             "end": 20.0 * (i % 3) + 18.0} for i in range(12)]
    kept.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    small, small_h, small_n = prefix_by_hours(kept, 0.05, tmp_path / "small.jsonl")  # 180 s: ten 18 s chunks
    big, big_h, big_n = prefix_by_hours(kept, 1.0, tmp_path / "big.jsonl")
    ids = lambda path: [json.loads(line)["id"] for line in path.read_text().splitlines()]  # noqa: E731
    assert (small_n, big_n) == (10, 12) and small_h == pytest.approx(0.05) and big_h == pytest.approx(12 * 18 / 3600)
    assert ids(big)[:small_n] == ids(small) == [f"c{i}" for i in range(10)]


def test_the_recipe_reference_is_the_one_the_options_generate():
    from k2d_train.pipeline.config import SECTION_OPTIONS, reference

    text = reference()
    assert (REPO / "docs/recipe.md").read_text() == text, "run: k2d settings --recipe > docs/recipe.md"
    assert all(f"## `{name}:`" in text for name in SECTION_OPTIONS)
    assert "| `temperature` | `2.0` | KL temperature (K²D: 2) |" in text  # the comment beside the field in the source


@pytest.mark.parametrize(("extra", "message"), [
    ("distill: {max_steps: abc}", "distill.max_steps: Input should be a valid integer"),
    ("validate: {rule: comp, alpha: high}", "validate.alpha: Input should be a valid number"),
    ("evaluate: {beam_size: many}", "evaluate.beam_size: Input should be a valid integer"),
    ("distill_encoder: {adapt: everything}", "distill_encoder.adapt 'everything': choose one of full, norms, lora"),
    ("distill: {max_step: 3}", r"config \[distill\]: unknown keys \['max_step'\]"),
    ("student: 2", r"config \[student\]: expected a mapping"),
])
def test_a_bad_value_is_refused_with_its_yaml_path(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        tiny_recipe(tmp_path, "\n" + extra + "\n")


def test_a_curve_point_is_trained_once_and_its_measured_time_kept(tmp_path):
    """A rerun that adds sizes must not retrain a point nor report a no-op resume's seconds as its training."""
    from k2d_train.experiments.curve import finished_point

    trained = []

    def train():
        trained.append(1)
        return {"model": "m", "train_seconds": 528.0, "steps_per_s": 0.46}

    first = finished_point(tmp_path / "d2-0.3h", train)
    again = finished_point(tmp_path / "d2-0.3h", lambda: {"train_seconds": 0.1})
    assert first == again == {"model": "m", "train_seconds": 528.0, "steps_per_s": 0.46} and trained == [1]


def test_curve_runs_of_one_family_merge_into_one_curve_and_merging_again_changes_nothing(tmp_path):
    """`k2d curve scale.yaml --with scale-1h/curve.json`: the 3 h point joins the 0.3 h and 1 h ones on one plot;
    each run keeps its own rows (its intervals were computed against its own teachers); the teachers' rows,
    the same models on the same sets, are drawn once; a rerun replaces its own point instead of adding one."""
    from k2d_train.experiments.curve import merged, plot

    def row(model, set_name, mer):
        return {"model": model, "set": set_name, "mer": mer, "vs_baseline": {"low": -0.01, "high": 0.02}}

    def run(config, points, rows):
        return {"config": config, "points": points, "rows": rows, "options": {}}

    teachers = [row("teacher", "test", 0.57), row("teacher, short context", "test", 0.55)]
    small = run("scale-1h.yaml", [{"model": "d2-1h", "layers": 2, "hours": 0.79}],
                [*teachers, row("2L, 0.79 h", "test", 0.68), {"peak_rss_mb": 1756.5}])  # compare's last row
    big = run("scale.yaml", [{"model": "d2-3h", "layers": 2, "hours": 2.9}], [*teachers, row("2L, 2.9 h", "test", 0.6)])
    once = merged([small, big])
    assert [p["model"] for p in once["points"]] == ["d2-1h", "d2-3h"]
    assert [p["config"] for p in once["points"]] == ["scale-1h.yaml", "scale.yaml"]
    assert [r["model"] for r in once["rows"]] == ["teacher", "teacher, short context", "2L, 0.79 h", "2L, 2.9 h"]
    assert [r["config"] for r in once["runs"]] == ["scale-1h.yaml", "scale.yaml"]
    rerun = run("scale.yaml", [{"model": "d2-3h", "layers": 2, "hours": 2.9}], [*teachers, row("2L, 2.9 h", "test", 0.59)])
    twice = merged([once, rerun])
    assert [p["model"] for p in twice["points"]] == ["d2-1h", "d2-3h"] and len(twice["runs"]) == 2
    assert twice["runs"][1]["rows"][-1]["mer"] == 0.59 and twice["rows"][-1]["mer"] == 0.59  # the rerun's own figure
    # another depth from the same recipe is another run: it joins, nothing is lost (the 4-layer run once replaced
    # the whole 2-layer run of the same recipe)
    deeper = run("scale.yaml", [{"model": "d4-3h", "layers": 4, "hours": 2.9}], [*teachers, row("4L, 2.9 h", "test", 0.57)])
    thrice = merged([twice, deeper])
    assert [p["model"] for p in thrice["points"]] == ["d2-1h", "d2-3h", "d4-3h"] and len(thrice["runs"]) == 3
    assert [r["model"] for r in thrice["rows"]] == ["teacher", "teacher, short context", "2L, 0.79 h", "2L, 2.9 h",
                                                    "4L, 2.9 h"]
    # a full-KL point (k2d curve --topk 0) is its own line beside the top-k one of the same depth and size
    from k2d_train.experiments.curve import p_label, series

    assert p_label({"layers": 2, "hours": 2.45, "kl": "full"}) != p_label({"layers": 2, "hours": 2.45})
    assert series({"layers": 2, "kl": "full"}) != series({"layers": 2})
    plot(twice, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    from k2d_train.experiments.curve import command

    assert command({"config": "/tmp/x/configs/scale.yaml", "options": {"layers": [2], "hours": [3.0], "topk": 0}}) == \
        "k2d curve configs/scale.yaml --layers 2 --hours 3 --topk 0"
    trained_longer = {"layers": [2], "hours": [7.0], "epochs": 25.0, "max_steps": 1500, "learning_rate": 2e-4,
                      "batch_size": 8, "topk": 64}  # steps decide a point's figures: a reader must be able to rerun it
    assert command({"config": "configs/scale.yaml", "options": trained_longer}) == \
        "k2d curve configs/scale.yaml --layers 2 --hours 7 --epochs 25 --max-steps 1500 --learning-rate 0.0002 --batch-size 8"


def test_why_a_stage_is_stale_names_its_fields_and_a_result_from_before_fingerprints_is_judged_on_what_it_recorded():
    from k2d_train.pipeline.stage_graph import why_stale

    wanted = {"distill": {"max_steps": 600, "teacher_topk": 64}, "teacher": "whisper-base"}
    fresh = {"recipe": wanted, "inputs": {"student": "abc"}}
    assert why_stale(fresh, wanted, {"student": "abc"}) == ""
    assert why_stale(fresh, wanted, {"student": "def"}) == "input re-runs: student"
    assert why_stale(fresh, {**wanted, "teacher": "whisper-small"}, {"student": "abc"}) == "changed: teacher"
    old = {"recipe": {"distill": {"max_steps": 600}}}  # before fingerprints: fewer fields, no inputs recorded
    assert why_stale(old, wanted, {"student": "def"}) == ""  # a field it never recorded is no reason to re-run
    assert why_stale(old, {**wanted, "distill": {"max_steps": 900, "teacher_topk": 64}}, {}) == \
        "changed: distill.max_steps"


def test_stage_9_races_the_untrained_teacher_at_the_students_own_context(tmp_path):
    """The cheapest shortcut a trained student must beat is its teacher served at the *same* short context
    (audio + the trained margin, rounded to the trained bucket), not some other one."""
    from k2d.policy import DecodePolicy
    from k2d_train.pipeline.run import _stages
    from k2d_train.pipeline.stage_bodies import evaluation_contenders
    from k2d_train.pipeline.stage_graph import ReadRecorder

    exported = {"teacher": "whisper-base", "student": "k2d-tiny"}
    plain = evaluation_contenders(tiny_recipe(tmp_path), exported)
    assert [c.label for c in plain] == ["teacher", "student"]
    config = tiny_recipe(tmp_path, "ablation_contexts: true\n"
                         "distill_encoder: {max_steps: 2, serve_pad_s: 1.5, serve_bucket_s: 0.5}\n", name="b.yaml")
    seen = ReadRecorder(config)
    shortcut = next(c for c in evaluation_contenders(seen, exported) if c.label == "teacher, short context")
    served = shortcut.policy(DecodePolicy()).context_policy()
    assert (shortcut.model, served.pad_s, served.bucket_s) == ("whisper-base", 1.5, 0.5)
    assert seen.touched <= set(next(s for s in _stages() if s.number == 9).reads)  # else stage 9 would stay stale


def test_stage_9_without_an_encoder_stage_has_no_short_context_row_and_does_not_fail(tmp_path):
    """A recipe with no ``distill_encoder`` section serves its student at Whisper's 30 s: stage 9 has no short
    context to copy, and must not stop on the missing section after stages 1-8 have run."""
    from k2d_train.pipeline.stage_bodies import evaluation_contenders

    path = tmp_path / "run.yaml"
    text = (REPO / "configs/tiny.yaml").read_text().replace("run_dir: ../runs/tiny", "run_dir: run")
    path.write_text("\n".join(line for line in text.splitlines() if not line.startswith("distill_encoder:"))
                    + "\nablation_contexts: true\n")
    config = RunConfig.load(path)
    assert config.distill_encoder is None
    labels = [c.label for c in evaluation_contenders(config, {"teacher": "whisper-base", "student": "k2d-tiny"})]
    assert labels == ["teacher", "student", "student, no teacher fallback"]
