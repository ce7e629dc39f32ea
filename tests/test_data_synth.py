"""The synthetic corpus: real voices, seeded augmentation, and out-of-domain sets that really are out of domain."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from k2d.audio import SAMPLE_RATE, decode_audio
from k2d.manifest import read_manifest
from k2d_train.data import augment, sentences
from k2d_train.data import voices as voices_module
from k2d_train.data.synth import SynthOptions, build_corpus, lecture_pairs
from k2d_train.data.voices import VOICES, MandarinVoice, bopomofo_of, voice, voices

TINY = SynthOptions(seed=0, lectures=1, lecture_minutes=0.3, test_utterances=3, dev_utterances=3,
                    ood_test_utterances=3, ood_dev_utterances=3, ood_clear_utterances=2, encoder_minutes=0.3)
SETS = ("test", "dev", "test_ood", "dev_ood")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    assert build_corpus(out, replace(TINY, workers=2))  # its parts side by side
    return out


def rows(corpus: Path, name: str) -> list:
    return list(read_manifest(corpus / f"{name}.jsonl"))


def english_words(texts) -> set[str]:
    return {w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t)}


@pytest.mark.slow  # synthesises speech: the integration tier
def test_every_manifest_exists_and_its_audio_decodes(corpus):
    for name in ("lectures", "lectures_reference", *SETS):
        listed = rows(corpus, name)
        assert listed, name
        for row in listed:
            audio = decode_audio(row.path(corpus / f"{name}.jsonl"))
            assert audio.size > SAMPLE_RATE and np.isfinite(audio).all() and np.abs(audio).max() > 0.05
    for name in SETS:
        for row in rows(corpus, name):
            assert row.text and row.extra["language"] == "zh"
            assert "+" in row.extra["voice"]
    report = json.loads((corpus / "voices.json").read_text())
    assert set(report["used"]) == {"lectures", "test_ood_noisy", "test_ood_clear", *SETS}


@pytest.mark.slow  # synthesises speech: the integration tier
def test_every_test_row_names_its_voice_group_and_the_noisy_copy_is_the_same_utterances_harder(corpus):
    ood, noisy = rows(corpus, "test_ood"), rows(corpus, "test_ood_noisy")
    assert [r.extra["group"] for r in ood] == [r.extra["voice"].split("+")[0] for r in ood]
    assert {r.extra["group"] for r in rows(corpus, "test")} <= {"gcin voices", "espeak voices", "kokoro voices"}
    assert [(r.text, r.extra["group"]) for r in noisy] == [(r.text, r.extra["group"]) for r in ood]
    for clean, harder in zip(ood, noisy, strict=True):
        a, b = decode_audio(clean.path(corpus / "x")), decode_audio(harder.path(corpus / "x"))
        assert len(b) == pytest.approx(len(a) / 0.92, rel=0.02)  # slower
        quiet = lambda x: float(np.percentile(np.abs(x), 10))  # noqa: E731 - the floor between words
        assert quiet(b) > 2 * quiet(a)


@pytest.mark.slow  # synthesises speech: the integration tier
def test_encoder_only_audio_is_cut_at_sentence_ends_into_short_spans(corpus):
    spans = rows(corpus, "encoder_audio")
    assert spans and len({r.extra["id"] for r in spans}) == len(spans)
    for row in spans:
        length = len(decode_audio(row.path(corpus / "x"))) / SAMPLE_RATE
        assert 4 <= row.extra["end"] - row.extra["start"] <= 16 and row.extra["end"] <= length + 0.01


def test_training_engines_choose_who_lectures_and_never_touch_held_out_voices():
    from k2d_train.data.synth import all_pairs

    classic = lecture_pairs(40, random.Random(0), ["gcin", "espeak"])
    assert {p.mandarin.engine for p in classic} == {"gcin", "espeak"}
    assert {p.mandarin.engine for p in lecture_pairs(40, random.Random(0))} == {"gcin", "espeak", "kokoro"}
    assert all_pairs(True, ["gcin"]) == all_pairs(True)
    assert {p.mandarin.name for p in all_pairs(True)} >= {"kokoro-xiaoyi", "kokoro-yunyang", "gcin-5"}


def test_the_clear_set_speaks_with_every_neural_voice_no_lecture_uses():
    from k2d_train.data.synth import clear_pairs

    neural = {v.name for v in voices("zh", True) + voices("zh", False) if v.engine == "kokoro"}
    held_out = {v.name for v in voices("zh", True) if v.engine == "kokoro"}
    assert {p.mandarin.name for p in clear_pairs()} == held_out  # every engine lectures: only the held-out ones
    unheard = {p.mandarin.name for p in clear_pairs(["gcin", "espeak"])}
    assert unheard == neural and len(neural) > len(held_out)
    lecturers = {p.mandarin.name for p in lecture_pairs(40, random.Random(0), ["gcin", "espeak"])}
    assert not unheard & lecturers


@pytest.mark.slow  # synthesises speech: the integration tier
def test_ood_voices_of_both_languages_never_lecture(corpus):
    lecture_voices = {v for row in rows(corpus, "lectures") for v in row.extra["voices"].split("+")}
    train = {v.name for v in VOICES if not v.heldout}
    for name in ("test_ood", "dev_ood"):
        for row in rows(corpus, name):
            mandarin, english = row.extra["voice"].split("+")
            assert voice(mandarin).language == "zh" and voice(english).language == "en"
            assert not {mandarin, english} & (lecture_voices | train)
    lecturers = {row.extra["voices"] for row in rows(corpus, "lectures")}
    for name in ("test", "dev"):
        assert all(row.extra["voice"] in lecturers for row in rows(corpus, name))
    assert lecture_voices <= train


def test_ood_sentences_share_no_frame_term_word_or_sentence():
    assert not set(sentences.OOD_FRAMES) & set(sentences.FRAMES)
    assert not set(sentences.OOD_PLAIN) & set(sentences.PLAIN)
    assert not {t.lower() for t in sentences.OOD_TERMS} & {t.lower() for t in sentences.TERMS}
    assert not english_words(sentences.OOD_TERMS) & english_words(sentences.TERMS)
    assert not set(sentences.ood_sentence_bank(0)) & set(sentences.sentence_bank(0))


@pytest.mark.slow  # synthesises speech: the integration tier
def test_set_sentences_come_from_their_bank_and_test_sentences_never_lecture(corpus):
    ood_bank, bank = set(sentences.ood_sentence_bank(TINY.seed)), set(sentences.sentence_bank(TINY.seed))
    lectured = {s["text"] for row in rows(corpus, "lectures_reference") for s in row.extra["sentences"]}
    for name in SETS:
        for row in rows(corpus, name):
            spoken = row.text.split("，")
            assert set(spoken) <= (ood_bank if name.endswith("_ood") else bank)
            assert not set(spoken) & lectured


@pytest.mark.slow  # synthesises speech: the integration tier
def test_utterance_durations_within_bounds(corpus):
    for name in SETS:
        for row in rows(corpus, name):
            seconds = len(decode_audio(row.path(corpus / f"{name}.jsonl"))) / SAMPLE_RATE
            assert TINY.min_utterance_s - 0.01 <= seconds <= TINY.max_utterance_s, (name, seconds)


@pytest.mark.slow  # synthesises speech: the integration tier
def test_same_seed_same_corpus_and_reuse_in_one_process_or_in_parts_side_by_side(corpus, tmp_path):
    assert not build_corpus(corpus, TINY)  # options match: reused
    voices_module._speak_cached.cache_clear()  # a cold start must give the same bytes as a warm one
    voices_module._load.cache_clear()
    assert build_corpus(tmp_path, replace(TINY, workers=1))  # the fixture's parts ran in two processes
    for name in ("lectures", "lectures_reference", "test_ood_noisy", "test_ood_clear", "encoder_audio", *SETS):
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (corpus / f"{name}.jsonl").read_bytes(), name
    made = sorted(p.relative_to(corpus) for p in corpus.rglob("*.flac"))
    assert made and made == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.flac"))
    assert all((tmp_path / p).read_bytes() == (corpus / p).read_bytes() for p in made)
    for name in ("conditions.json", "voices.json"):
        assert (tmp_path / name).read_text() == (corpus / name).read_text(), name


def test_registry_has_train_and_heldout_voices_of_both_languages():
    names = [v.name for v in VOICES]
    assert len(names) == len(set(names))
    for language in ("zh", "en"):
        assert len(voices(language, False)) >= 2 and len(voices(language, True)) >= 1


@pytest.mark.slow  # synthesises speech: the integration tier
def test_every_registered_voice_speaks_deterministically_and_was_measured():
    for spec in VOICES:
        text = "今天的天氣" if spec.language == "zh" else "code review"
        audio = spec.speak(text, rate=1.04)
        assert 0.3 * SAMPLE_RATE < audio.size < 5 * SAMPLE_RATE and np.isfinite(audio).all(), spec.name
        voices_module._speak_cached.cache_clear()
        assert np.array_equal(audio, spec.speak(text, rate=1.04)), spec.name
        assert voices_module.MEASURED_MER[spec.name] < 0.8, spec.name  # the teacher understands it
    three, five = voice("gcin-3").speak("大家好"), voice("gcin-5").speak("大家好")
    assert three.size and five.size and not (three.size == five.size and np.array_equal(three, five))


def test_heldout_gcin_speaker_reads_every_ood_sentence_alone():
    """gcin speaker 5 lacks 42 syllables; held out, it may not borrow speaker 3's, so OOD text must avoid them."""
    alone = MandarinVoice(speaker="5", fallback=None)
    for text in sentences.ood_sentence_bank(0):
        for syllable in bopomofo_of(text):
            alone.recording(syllable)  # raises KeyError if speaker 5 has no tone of it


def test_lecture_pairs_repeat_and_cover_the_training_voices():
    count = 2 * max(len(voices("zh", False)), len(voices("en", False)))
    pairs = lecture_pairs(count, random.Random(0))
    names = [p.name for p in pairs]
    assert all(names.count(n) >= 2 for n in names) and len(set(names)) == count // 2
    assert {p.mandarin.name for p in pairs} == {v.name for v in voices("zh", False)}
    assert {p.english.name for p in pairs} == {v.name for v in voices("en", False)}


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio = voice("gcin-3").speak("我們今天要講的是")
    return np.concatenate([audio, np.zeros(SAMPLE_RATE // 2, np.float32)])


def test_condition_draws_are_seeded():
    first = augment.draw_condition(np.random.default_rng(7))
    assert first == augment.draw_condition(np.random.default_rng(7))
    assert first != augment.draw_condition(np.random.default_rng(8))


def test_channel_is_deterministic_finite_and_keeps_length(speech):
    rng = np.random.default_rng(3)
    for config in (augment.TRAIN, augment.OOD):
        for _ in range(3):
            condition = augment.draw_condition(rng, config)
            out = augment.apply_channel(speech, condition)
            assert out.shape == speech.shape and out.dtype == np.float32 and np.isfinite(out).all()
            assert np.array_equal(out, augment.apply_channel(speech, condition))


def test_noise_lands_at_the_requested_snr(speech):
    condition = augment.Condition(seed=1, snr_db=20.0, noise_color="pink")
    noise = augment.apply_channel(speech, condition) - speech
    snr = 10 * np.log10(np.mean(speech**2) / np.mean(noise**2))
    assert abs(snr - 20.0) < 0.5


def test_reverb_spreads_energy_in_time(speech):
    dry = augment.Condition(seed=1)
    wet = augment.Condition(seed=1, rt60=0.6, room=(8.0, 6.0, 3.0), source=(2.0, 3.0, 1.6), mic=(5.0, 3.0, 1.2))
    tail = slice(len(speech) - SAMPLE_RATE // 4, None)  # the silence after the speech
    assert np.abs(augment.apply_channel(speech, dry)[tail]).max() == 0
    assert np.abs(augment.apply_channel(speech, wet)[tail]).max() > 1e-3


def test_pitch_keeps_length_and_tempo_scales_it(speech):
    assert len(augment.pitch_shift(speech, 2.0)) == len(speech)
    assert abs(len(augment.time_stretch(speech, 1.25)) - len(speech) / 1.25) < 0.02 * len(speech)
    sentence = augment.perturb_sentence(speech, augment.draw_condition(np.random.default_rng(0)), np.random.default_rng(1))
    again = augment.perturb_sentence(speech, augment.draw_condition(np.random.default_rng(0)), np.random.default_rng(1))
    assert np.array_equal(sentence, again) and np.isfinite(sentence).all()
