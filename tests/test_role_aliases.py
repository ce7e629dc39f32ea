"""Role aliases (``student``/``teacher``) resolve in one place, for the server and for ``k2d.load`` alike."""

from __future__ import annotations

import pytest

from k2d.registry import ModelEntry, Registry, UnknownModelError, resolve_alias, resolve_model


def test_an_alias_picks_the_preferred_model_of_its_role_and_a_real_name_wins():
    roles = {"k2d-student": "student", "other-student": "student", "whisper-base": "teacher"}
    assert resolve_alias("student", roles) == "k2d-student"
    assert resolve_alias("student", roles, preferred="other-student") == "other-student"
    assert resolve_alias("teacher", roles, preferred="k2d-student") == "whisper-base"
    assert resolve_alias("student", {**roles, "student": None}) == "student"  # a model really named so
    assert resolve_alias(None, roles) is None and resolve_alias("whisper-base", roles) == "whisper-base"
    with pytest.raises(UnknownModelError, match="no teacher model"):
        resolve_alias("teacher", {"k2d-student": "student"})


def test_resolve_model_takes_the_alias_to_the_servable_student_not_its_training_form(tmp_path):
    registry = Registry(tmp_path)
    for name, fmt, role in (("k2d-student", "ctranslate2", "student"), ("k2d-student-hf", "transformers", "student"),
                            ("gone-student", "ctranslate2", "student"), ("whisper-base", "ctranslate2", "teacher")):
        if name != "gone-student":
            (tmp_path / name).mkdir()
        registry.add(ModelEntry(name=name, format=fmt, path=name, role=role))
    path, entry = resolve_model("student", tmp_path)
    assert entry.name == "k2d-student" and path == tmp_path / "k2d-student"
    assert resolve_model("teacher", tmp_path)[1].name == "whisper-base"


def test_the_language_list_is_every_language_token_of_the_multilingual_vocabulary(registry):
    """k2d's own list (no private import from a tokenizer library) matches the real tokenizer's ``<|xx|>`` tokens."""
    import json

    from k2d.languages import WHISPER_LANGUAGES

    added = json.loads((registry.path_of("whisper-base") / "tokenizer.json").read_text())["added_tokens"]
    translate = next(t["id"] for t in added if t["content"] == "<|translate|>")  # the first token after the languages
    language_tokens = [t["content"] for t in sorted(added, key=lambda t: t["id"]) if 50259 <= t["id"] < translate]
    assert [t[2:-2] for t in language_tokens] == list(WHISPER_LANGUAGES[: len(language_tokens)])
    assert len(WHISPER_LANGUAGES) == len(set(WHISPER_LANGUAGES)) >= len(language_tokens) >= 99
