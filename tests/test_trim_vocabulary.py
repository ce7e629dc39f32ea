"""`k2d models trim`: a real Whisper base whose output layer keeps only the tokens its texts use.

The promise that makes trimming safe: a kept token's logit is the one the full model computes, so wherever
the full model's choice is a kept token, the trimmed model chooses it too. Greedy decoding of clips whose
transcripts chose the kept set must therefore be token-for-token the full model's, timestamps included.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from tokenizers import Tokenizer
from typer.testing import CliRunner

from k2d.audio import decode_audio
from k2d.engine import DecodeOptions, WhisperEngine
from k2d.registry import ModelEntry, Registry
from k2d_cli.main import app
from k2d_train.store.ct2_format import read_model_bin
from k2d_train.store.trim_vocabulary import kept_ids, trim
from k2d_train.store.whisper_assets import load_tokenizer_json
from tests.conftest import DATA

runner = CliRunner()
GREEDY = DecodeOptions(beam_size=1, temperature_fallback="none")


@pytest.fixture(scope="module")
def clips(manifest_rows):
    return [(decode_audio(str(DATA / row.audio)), row.extra.get("language") or "zh") for row in manifest_rows]


@pytest.fixture(scope="module")
def full(registry):
    return WhisperEngine(registry.path_of("whisper-base"), "cpu", [0], "int8")


def _decode(engine, clips):
    return [engine.transcribe_batch([audio], [language], GREEDY)[0] for audio, language in clips]


@pytest.fixture(scope="module")
def trimmed_store(registry, full, clips, tmp_path_factory):
    """whisper-base trimmed to the tokens of its own greedy transcripts of the test clips."""
    root = tmp_path_factory.mktemp("trim")
    store = Registry(root / "store")
    base = registry.get("whisper-base")
    store.add(ModelEntry(**{**base.__dict__, "path": str(registry.path_of("whisper-base"))}))
    texts = root / "said.txt"
    texts.write_text("\n".join(result.text for result in _decode(full, clips)), encoding="utf-8")
    result = runner.invoke(app, ["models", "trim", "whisper-base", "--text", str(texts), "--name", "base-trimmed",
                                 "--script", "as_is",
                                 "--store", str(store.store)])
    assert result.exit_code == 0, result.output
    return store


def test_trimmed_model_decodes_token_for_token_what_the_full_one_does(registry, full, clips, tmp_path):
    """Kept: the tokens the full model emitted (a text's own encoding may split a word otherwise: the model
    once said " r"+"adient" where the tokenizer writes " rad"+"ient")."""
    before = _decode(full, clips)
    source = registry.path_of("whisper-base")
    emitted = Counter(token for result in before for segment in result.segments for token in segment.tokens)
    trim(source, tmp_path / "trimmed", kept_ids(load_tokenizer_json(source / "tokenizer.json"), emitted))
    trimmed = WhisperEngine(tmp_path / "trimmed", "cpu", [0], "int8")
    rows = read_model_bin(trimmed.path / "model.bin").get("decoder/embeddings/weight").shape[0]
    assert 1608 + 256 < rows < 10_000  # special and byte tokens, and what the clips said
    for full_result, result in zip(before, _decode(trimmed, clips), strict=True):
        assert result.text == full_result.text
        assert [(s.start, s.end, s.text) for s in result.segments] == \
            [(s.start, s.end, s.text) for s in full_result.segments]
        assert [full.tokenizer.id_to_token(t) for s in full_result.segments for t in s.tokens] == \
            [trimmed.tokenizer.id_to_token(t) for s in result.segments for t in s.tokens]


def test_trimmed_model_is_registered_multilingual_smaller_and_as_served(trimmed_store):
    full, trimmed = trimmed_store.get("whisper-base"), trimmed_store.get("base-trimmed")
    assert trimmed.languages == full.languages and len(trimmed.languages) == 99
    assert trimmed.role == full.role and trimmed.serving == full.serving and trimmed.family == full.family
    assert trimmed.parameters < full.parameters - 20_000_000  # 46k rows of 512 gone
    engine = WhisperEngine(trimmed_store.path_of("base-trimmed"), "cpu", [0], "int8")
    assert engine.multilingual and engine.knows_language("zh") and not engine.capabilities.detects_language
    assert engine.model.is_multilingual is False  # CTranslate2's own test, which the config's record overrides


def test_trimmed_tokenizer_still_spells_words_it_dropped(trimmed_store):
    """Dropped merges make encoding fall back to smaller kept pieces: an initial prompt still says what it says."""
    tokenizer = Tokenizer.from_file(str(trimmed_store.path_of("base-trimmed") / "tokenizer.json"))
    text = " Kubernetes 集群的 p99 latency 降到了 Ω"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids) == text
    assert max(ids) < tokenizer.token_to_id("<|endoftext|>")


def test_trimmed_model_asks_for_a_language_instead_of_detecting(trimmed_store, clips):
    engine = WhisperEngine(trimmed_store.path_of("base-trimmed"), "cpu", [0], "int8")
    with pytest.raises(ValueError, match="trimmed.*name the language"):
        engine.transcribe_batch([clips[0][0]], [None], GREEDY)


def test_trim_refuses_what_it_cannot_trim(trimmed_store, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    for args, reason in ((["base-trimmed-nope", "--text", str(empty)], "unknown model"),
                         (["whisper-base", "--text", str(empty)], "no text")):
        result = runner.invoke(app, ["models", "trim", *args, "--store", str(trimmed_store.store)])
        assert result.exit_code == 1 and reason in result.output and "Traceback" not in result.output


def test_trimming_a_trimmed_model_keeps_the_original_size(trimmed_store, tmp_path):
    """The record says the size CTranslate2 would have needed, however often a model is trimmed."""
    said = tmp_path / "said.jsonl"
    said.write_text(json.dumps({"text": "今天我们来讲 gradient descent"}, ensure_ascii=False) + "\n")
    result = runner.invoke(app, ["models", "trim", "base-trimmed", "--text", str(said), "--name", "base-trimmed-2",
                                 "--store", str(trimmed_store.store)])
    assert result.exit_code == 0, result.output
    config = json.loads((trimmed_store.path_of("base-trimmed-2") / "config.json").read_text())
    assert config["trimmed_from_vocabulary_size"] == 51865
    record = json.loads((trimmed_store.path_of("base-trimmed-2") / "k2d_vocabulary.json").read_text())
    first = json.loads((trimmed_store.path_of("base-trimmed") / "k2d_vocabulary.json").read_text())
    assert set(record["original_ids"]) < set(first["original_ids"]) and record["original_ids"][-1] == 51864
    assert len(trimmed_store.get("base-trimmed-2").languages) == 99
    shutil.rmtree(trimmed_store.path_of("base-trimmed-2"))


def _small_whisper_like_tokenizer() -> dict:
    """A byte-level BPE trained here, with Whisper's special tokens after its text tokens (no model store)."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    said = ["我们用 gradient descent 来训练模型", "the learning rate decides the step", "今天我们来讲机器学习"] * 20
    tokenizer.train_from_iterator(said, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                             show_progress=False))
    tokenizer.add_special_tokens(["<|endoftext|>", "<|startoftranscript|>", "<|zh|>", "<|transcribe|>",
                                  "<|notimestamps|>", "<|0.00|>", "<|0.02|>"])
    return json.loads(tokenizer.to_str())


def test_kept_tokens_are_bytes_used_tokens_and_every_special_one_in_order():
    from k2d_train.store.trim_vocabulary import _tokenizer, token_counts

    full_json = _small_whisper_like_tokenizer()
    full = Tokenizer.from_str(json.dumps(full_json))
    kept = kept_ids(full_json, token_counts(full, ["我们用 gradient"]))
    specials = [t["id"] for t in full_json["added_tokens"]]
    assert kept == sorted(kept) and set(specials) <= set(kept) and len(kept) < full.get_vocab_size()
    trimmed = Tokenizer.from_str(json.dumps(_tokenizer(full_json, {old: new for new, old in enumerate(kept)})))
    assert trimmed.get_vocab_size() == len(kept)
    # order kept: text tokens stay below <|endoftext|>, timestamps stay last and contiguous
    assert trimmed.token_to_id("<|endoftext|>") == len(kept) - len(specials)
    assert trimmed.token_to_id("<|0.02|>") == len(kept) - 1
    for text in ("我们用 gradient", "the learning rate", "模型 descent Ω"):  # used, partly dropped, never seen
        ids = trimmed.encode(text, add_special_tokens=False).ids
        assert trimmed.decode(ids) == text
    used = full.encode("我们用 gradient", add_special_tokens=False).ids
    assert [trimmed.id_to_token(i) for i in trimmed.encode("我们用 gradient", add_special_tokens=False).ids] == \
        [full.id_to_token(i) for i in used]  # what the texts used is spelled as before


def test_server_asks_for_a_language_the_trimmed_model_cannot_detect(trimmed_store):
    """Through a real server: 422 with the reason when no language is named (the entry has no default), 200 with one."""
    import httpx

    from app.settings import Settings
    from tests.conftest import free_port, running_server

    settings = Settings(models_dir=trimmed_store.store, port=free_port(), models=["base-trimmed"])
    clip = {"file": ("a.flac", (DATA / "mixed_gradient.flac").read_bytes())}
    with running_server(settings) as (url, _):
        refused = httpx.post(url + "/transcribe", files=clip, data={"model": "base-trimmed"}, timeout=120)
        assert refused.status_code == 422 and "cannot detect the language" in refused.json()["error"]["message"]
        said = httpx.post(url + "/transcribe", files=clip, data={"model": "base-trimmed", "language": "zh"}, timeout=120)
        assert said.status_code == 200 and "descent" in said.json()["text"]


def test_the_shipped_english_words_are_distinct_plain_words():
    """`--english-words` / `trim_english_words` read this file from the installed package."""
    from k2d_train.store.trim_vocabulary import ENGLISH_WORDS

    words = ENGLISH_WORDS.read_text(encoding="utf-8").split()
    assert len(words) == len(set(words)) == 3607 and all(w.isascii() and w.isalpha() for w in words)
    assert {"the", "because", "question"} <= set(words)
