"""`k2d run` end to end on the real base teacher: tiny corpus, few chunks, two steps, then a rerun."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from k2d.context import ContextPolicy
from k2d.registry import ModelEntry, Registry
from k2d_cli.main import app
from tests.conftest import REPO

# the shipped smoke-test config, its run folder beside the test's config, plus one ablation
# and the student served with a trimmed vocabulary
TRIMMED = "repetition_penalty: 1.1, trim_vocabulary: true, trim_english_words: true}"
CONFIG = (REPO / "configs/tiny.yaml").read_text().replace("run_dir: ../runs/tiny", "run_dir: run").replace(
    "repetition_penalty: 1.1}", TRIMMED) + "ablation_rules: [comp]\n"


@pytest.fixture(scope="module")
def store(registry, tmp_path_factory):
    """A scratch store that points at the fetched models, so test students never touch the real one."""
    scratch = Registry(tmp_path_factory.mktemp("store"))
    for entry in registry.entries():
        if entry.family in ("whisper-base", "whisper-tiny.en") and entry.name in ("whisper-base", "whisper-base-hf"):
            scratch.add(ModelEntry(**{**entry.__dict__, "path": str(registry.path_of(entry.name))}))
    return scratch


@pytest.mark.slow
def test_run_builds_exports_registers_and_reuses(store, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(config), "--store", str(store.store)])
    assert result.exit_code == 0, result.output
    registry = Registry(store.store)
    student = registry.get("tiny-student")
    assert student.role == "student" and student.format == "ctranslate2" and student.quantization == "int8"
    assert registry.get("whisper-base-int8").role == "teacher"
    card = json.loads((registry.path_of("tiny-student") / "k2d_card.json").read_text())
    assert card["kept_layers"] == [0, 5] and card["student_parameters"] < card["teacher_parameters"]
    assert set(card["kept_per_rule"]) >= {"none", "ngram", "mer", "per", "comp"}
    assert card["kept_per_rule"]["none"]["percent"] == 100.0
    rows = {(r["set"], r["model"]): r for r in card["evaluation"]}
    assert set(rows) == {(s, m) for s in ("test", "test_ood", "test_ood_noisy") for m in ("teacher", "student")}
    assert all(row["groups"] for row in rows.values())  # every set split by voice group, teacher beside student
    assert all(r["utterances"] == 3 and r["mer"] >= 0 and "repetitions" in r for r in rows.values())
    assert card["context"] == "audio + 2 s, rounded up to 2 s" and card["encoder_distillation"]["steps"] == 2
    assert ContextPolicy.of_model(registry.path_of("tiny-student")) == ContextPolicy(2.0, 2.0)  # served as trained
    assert "comp" in card["ablation"] and card["steps"] == 2 and card["best_dev"]["step"] == 2
    best = card["best_dev"]  # chosen by guarded MER + looping share on the out-of-domain dev set
    assert best["dev_rows"] == 2 and 0 <= best["dev_loops"] <= 2 and best["dev_guarded"] >= 0
    assert best["selection"] == pytest.approx(best["dev_guarded"] + best["dev_loops"] / 2, abs=1e-3)
    assert student.repetition_penalty.value == 1.1  # the config's export penalty, served from the registry entry
    full = registry.get("tiny-student-full-vocabulary")  # trim_vocabulary: the full export stays, to compare
    assert full.serving == student.serving and full.parameters - student.parameters > 20_000_000
    trimmed = json.loads((registry.path_of("tiny-student") / "config.json").read_text())
    assert trimmed["trimmed_from_vocabulary_size"] == 51865 and len(student.languages) == 99
    vocabulary = json.loads((registry.path_of("tiny-student") / "tokenizer.json").read_text())["model"]["vocab"]
    assert {"Ġbecause", "Ġquestion"} <= set(vocabulary)  # trim_english_words: English the tiny labels never said
    assert (registry.path_of("tiny-student") / "MODEL_CARD.md").read_text().startswith("# tiny-student")
    chunks = [json.loads(line) for line in (tmp_path / "run" / "pseudo" / "chunks.jsonl").read_text().splitlines()]
    assert chunks and all(c["end"] - c["start"] <= 30 and c["teacher_label"].startswith("<|") for c in chunks)
    assert all(len(c["nbest"]) == 2 and c["segments"][0]["tokens"] for c in chunks)

    again = runner.invoke(app, ["run", str(config), "--store", str(store.store)])
    assert again.exit_code == 0 and again.output.count("done before, reusing") == 9, again.output
    listed = runner.invoke(app, ["run", str(config), "--list-stages"])
    assert listed.exit_code == 0 and "7  distill-ctc" in listed.output and "off in this config" in listed.output
    assert listed.output.count("\n    done") == 9, listed.output
    from k2d_train.pipeline.run import _stages

    for stage in _stages():  # every recipe field a stage touched is one it declares (else it would be reused stale)
        marker = tmp_path / "run" / "stages" / f"{stage.name}.json"
        if marker.exists():
            assert set(json.loads(marker.read_text())["touched"]) <= set(stage.reads), stage.name
    evaluated = (tmp_path / "run" / "stages" / "evaluate.json").stat().st_mtime
    partial = runner.invoke(app, ["run", str(config), "--store", str(store.store), "--from-stage", "9", "--to-stage", "9"])
    assert partial.exit_code == 0 and partial.output.count("done before, reusing") == 7, partial.output
    assert "stopped after stage 9" in partial.output and not (tmp_path / "run" / "stages" / "ablation.json").exists()
    assert (tmp_path / "run" / "stages" / "evaluate.json").stat().st_mtime > evaluated  # stage 9 ran again
    # docker compose's one-shot `train` command: the student is there, so it neither fetches nor trains
    boot = runner.invoke(app, ["bootstrap", str(config), "--store", str(store.store), "--device", "cpu"])
    assert boot.exit_code == 0 and "nothing to train" in boot.output and "[stage" not in boot.output, boot.output

    # a second run over the same audio files takes the first run's labels (pseudo_label.reuse) instead of decoding
    # them again, and refuses labels made with other options
    recipe = yaml.safe_load(CONFIG)
    corpus = tmp_path / "run" / "corpus"
    recipe.update(run_dir="second", corpus={"audio": str(corpus / "lectures.jsonl"), "test": str(corpus / "test.jsonl"),
                                            "test_ood": str(corpus / "test_ood.jsonl")})
    recipe["pseudo_label"] = {**recipe["pseudo_label"], "reuse": ["run"]}
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump(recipe))
    reused = runner.invoke(app, ["run", str(second), "--store", str(store.store), "--to-stage", "2"])
    assert reused.exit_code == 0 and "1 file(s) labelled by run taken as they are" in reused.output, reused.output
    made = json.loads((tmp_path / "second" / "stages" / "pseudo-label.json").read_text())
    assert made["labelled_now"] == 0 and made["reused_files"] == 1 and made["chunks"] == len(chunks)
    again_chunks = [json.loads(line) for line in (tmp_path / "second" / "pseudo" / "chunks.jsonl").read_text().splitlines()]
    assert [{**c, "audio": None} for c in again_chunks] == [{**c, "audio": None} for c in chunks]
    assert {(tmp_path / "second" / "pseudo" / c["audio"]).resolve() for c in again_chunks} == \
        {(tmp_path / "run" / "pseudo" / c["audio"]).resolve() for c in chunks}
    recipe.update(run_dir="third", pseudo_label={**recipe["pseudo_label"], "beam_size": 3})
    second.write_text(yaml.safe_dump(recipe))
    refused = runner.invoke(app, ["run", str(second), "--store", str(store.store), "--to-stage", "2"])
    assert refused.exit_code != 0 and "labelled with another recipe (pseudo_label differ)" in refused.output, \
        refused.output


def test_a_config_with_a_typo_is_refused(store, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(CONFIG.replace("max_steps", "max_stpes"))
    result = CliRunner().invoke(app, ["run", str(config), "--store", str(store.store)])
    assert result.exit_code == 1 and "max_stpes" in result.output
