"""Recipes: sections checked, contradictions refused, variants that say only what differs."""

from __future__ import annotations

import pytest

from k2d_train.config import RunConfig
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


def test_a_finished_stage_made_with_other_settings_is_refused_not_reused(tmp_path):
    """Changing the filtering rule after stage 3 ran must not silently train on the old rule's chunks."""
    from k2d_train.pipeline import Markers, Run, Stage, StaleStageError, _run_stage

    def config_with(rule: str) -> RunConfig:
        path = tmp_path / f"{rule}.yaml"
        path.write_text((REPO / "configs/tiny.yaml").read_text().replace("run_dir: ../runs/tiny", "run_dir: run")
                        + f"\nvalidate: {{rule: {rule}}}\n")
        return RunConfig.load(path)

    calls = []
    stage = Stage(3, "validate", "test", lambda run: calls.append(run.config.validate.rule) or {"kept": 1},
                  reads=("validator", "validate"))
    first = config_with("ngram")
    markers, lines = Markers(first.run_dir), []
    assert _run_stage(stage, Run(first, None, {}, lines.append), markers, lines.append)["kept"] == 1
    assert _run_stage(stage, Run(first, None, {}, lines.append), markers, lines.append)["kept"] == 1
    assert calls == ["ngram"] and "done before, reusing" in lines[-1]  # same settings: reused
    changed = config_with("mer")
    with pytest.raises(StaleStageError, match="--from-stage 3"):
        _run_stage(stage, Run(changed, None, {}, lines.append), markers, lines.append)
    assert calls == ["ngram"]


def test_a_paused_stage_is_not_marked_done_and_runs_again_next_time(tmp_path, monkeypatch):
    """``distill.stop_after_steps`` pauses stage 6 after a checkpoint: the next ``k2d run`` must resume it, not
    reuse a result that has no final model (issue 31 defect)."""
    from k2d_train import pipeline
    from k2d_train.pipeline import Markers, Stage, StagePaused

    (tmp_path / "run.yaml").write_text((REPO / "configs/tiny.yaml").read_text().replace("run_dir: ../runs/tiny",
                                                                                          "run_dir: run"))
    config = RunConfig.load(tmp_path / "run.yaml")
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

    from k2d_train.curve import prefix_by_hours

    kept = tmp_path / "kept.jsonl"
    rows = [{"audio": f"lectures/lecture_{i // 3:04d}.flac", "id": f"c{i}", "start": 20.0 * (i % 3),
             "end": 20.0 * (i % 3) + 18.0} for i in range(12)]
    kept.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    small, small_h, small_n = prefix_by_hours(kept, 0.05, tmp_path / "small.jsonl")  # 180 s: ten 18 s chunks
    big, big_h, big_n = prefix_by_hours(kept, 1.0, tmp_path / "big.jsonl")
    ids = lambda path: [json.loads(line)["id"] for line in path.read_text().splitlines()]  # noqa: E731
    assert (small_n, big_n) == (10, 12) and small_h == pytest.approx(0.05) and big_h == pytest.approx(12 * 18 / 3600)
    assert ids(big)[:small_n] == ids(small) == [f"c{i}" for i in range(10)]
