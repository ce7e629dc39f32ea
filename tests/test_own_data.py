"""``configs/own-data.yaml`` on a folder of recordings that are not the synthetic corpus: trained and served.

The shipped config is used as it is, with only its paths pointed at a scratch folder and its step counts
made tiny (what a smoke run changes): a folder of real clips in four formats as the unlabelled audio,
small manifests for dev/test, a student at the end that the real server serves."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from app.settings import Settings
from k2d.registry import ModelEntry, Registry
from k2d_cli.main import app
from tests.conftest import DATA, REPO, free_port, running_server

TINY_STEPS = {"distill_encoder": {"max_steps": 2, "batch_size": 2, "save_every": 2},
              "distill": {"max_steps": 2, "batch_size": 2, "warmup_steps": 1, "eval_every": 2, "save_every": 2,
                          "dev_limit": 2}}


@pytest.fixture
def user_folder(registry, tmp_path):
    """What a user has: recordings (no transcripts) and four small labelled manifests."""
    recordings = tmp_path / "data" / "recordings" / "week1"
    recordings.mkdir(parents=True)
    for name in ("zh_lecture.flac", "mixed_gradient.flac", "mixed_loss.ogg", "mixed_batch.mp3"):
        shutil.copy(DATA / name, recordings / name)
    rows = [json.loads(line) for line in (DATA / "manifest.jsonl").read_text().splitlines()]
    labelled = [{**r, "audio": str(DATA / r["audio"]), "group": "teacher-voice"} for r in rows if r["text"]]
    for split in ("test", "test_ood", "dev", "dev_ood"):
        (tmp_path / "data" / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in labelled[:3]), encoding="utf-8")
    store = Registry(tmp_path / "store")
    for name in ("whisper-base", "whisper-base-hf", "whisper-tiny.en"):
        store.add(ModelEntry(**{**registry.get(name).__dict__, "path": str(registry.path_of(name))}))
    config = yaml.safe_load((REPO / "configs/own-data.yaml").read_text())
    for section, values in TINY_STEPS.items():
        config[section] = {**config[section], **values}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "own-data.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    return tmp_path


@pytest.mark.slow
def test_own_recordings_train_and_serve_a_student(user_folder):
    store = user_folder / "store"
    result = CliRunner().invoke(app, ["run", str(user_folder / "configs/own-data.yaml"), "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output  # the shipped recipe validates with another model than its teacher
    chunks = (user_folder / "runs" / "own-data" / "pseudo" / "chunks.jsonl").read_text().splitlines()
    assert len(chunks) >= 4 and all("week1" in json.loads(c)["audio"] for c in chunks)  # the folder, recursively
    registry = Registry(store)
    student = registry.get("my-student")
    assert student.role == "student" and student.serving.teacher == "whisper-base"
    groups = student.card["evaluation"][0]["groups"]
    assert set(groups) == {"teacher-voice"}  # the manifests' own group names
    settings = Settings(models_dir=store, port=free_port(), cpu_threads=2)
    with running_server(settings) as (url, _), (DATA / "mixed_gradient.flac").open("rb") as fh:
        answer = httpx.post(f"{url}/transcribe", files={"file": fh}, timeout=120)
    body = answer.json()  # two training steps make no useful model: what is checked is that it is the one served
    assert answer.status_code == 200 and body["model"] == "my-student" and body["duration"] > 1.5 and "text" in body
