"""The loop guard, the context policy and the serving path that evaluation shares, on real models."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from k2d.audio import decode_audio
from k2d.context import FULL_FRAMES, ContextPolicy
from k2d.engine import DecodeOptions, WhisperEngine
from k2d.guard import LOOP_REASONS, GuardOptions, RepetitionPenalty, check, collapse_repeats, compression_ratio
from k2d.policy import DecodePolicy
from k2d.served import Served
from k2d.textunits import join_texts, raw_units
from k2d.transcribe import Transcriber, decode_windows
from tests.conftest import MANIFEST

DATA = MANIFEST.parent


def test_context_policy_rounds_audio_plus_margin_up_to_buckets(tmp_path):
    policy = ContextPolicy(pad_s=2.0, bucket_s=2.0)
    assert policy.frames(16000 * 4) == 600  # 4 s + 2 s → 6 s
    assert policy.frames(16000 * 4 + 1) == 800  # just over 6 s → the next bucket
    assert policy.frames(16000 * 29) == FULL_FRAMES and ContextPolicy().frames(10) == FULL_FRAMES
    policy.save(tmp_path)
    assert ContextPolicy.of_model(tmp_path) == policy and ContextPolicy.of_model(tmp_path / "none").full


def test_a_short_context_model_gets_windows_no_longer_than_it_was_trained_on(tmp_path):
    """Long speech is cut at pauses into windows of the policy's longest trained input, not 30 s."""
    from k2d.windows import split

    policy = ContextPolicy(2.0, 2.0, max_window_s=12.0)
    policy.save(tmp_path)
    assert ContextPolicy.of_model(tmp_path).max_window_s == 12.0 and "≤ 12 s" in policy.describe()
    clips = [decode_audio(DATA / name) for name in ("zh_lecture.flac", "en_lecture.flac", "mixed_gradient.flac")]
    speech = np.concatenate([np.concatenate([c, np.zeros(8000, np.float32)]) for c in clips * 4])  # ~50 s, pauses
    for vad in (True, False):
        long, short = split(speech, vad), split(speech, vad, max_window_s=policy.max_window_s)
        assert len(short) > len(long) and max(len(w.audio) for w in short) <= 12 * 16000
        assert max(len(w.audio) for w in long) > 12 * 16000


def test_guard_reasons():
    options = GuardOptions()
    assert options.budget(1.0) == 32 and options.budget(10.0) == 120 and options.budget(60.0) == 440
    assert check("我們今天要講的是 gradient descent", 12, -0.3, 60, options) is None
    assert check("x", 60, -0.3, 60, options) == "token_budget"
    assert check("復" * 120, 40, -0.3, 200, options) == "compression_ratio"
    assert compression_ratio("【" * 100) > 2.4
    assert check("we need the loss then we need the loss then we need the loss then we need the loss", 40, -0.2, 200,
                 options) == "compression_ratio"
    assert check("今天天氣很好我們去公園", 10, -1.5, 60, options) == "logprob"
    assert check("anything", 500, -9.0, 60, GuardOptions(enabled=False)) is None


def test_short_back_to_back_loops_are_flagged_and_speech_is_not():
    """Loops too short for the 4 × 4 n-gram flag (seen from a distilled student on unseen voices)."""
    options, ngram_only = GuardOptions(), GuardOptions(run_min_units=None)
    for loop in ("我博博 博 博 博 博 博 博", "我刚刚刚刚刚刚把写了",
                 "起床 Let the other organization Let the other organization Let the other organization"):
        assert check(loop, 12, -0.3, 60, options) == "repeated_ngram", loop
        assert check(loop, 12, -0.3, 60, ngram_only) is None, loop
    for speech in ("哈哈哈 好的", "刚刚把 update 寄给你了", "我们的模型我们的数据我们的结果",
                   "Let the organization Let the organization decide"):
        assert check(speech, 12, -0.3, 60, options) is None, speech


def test_only_loop_flags_send_a_student_to_its_teacher():
    student, alone = GuardOptions.for_model(True), GuardOptions.for_model(False)
    assert student.escalates("token_budget") and student.escalates("repeated_ngram")
    assert not student.escalates("logprob") and not student.escalates(None) and student.temperatures == ()
    assert GuardOptions.for_model(True, ("logprob",)).escalates("logprob")
    assert not alone.escalates("token_budget") and alone.temperatures  # no teacher: Whisper's sampling fallback
    with pytest.raises(ValueError, match="unknown guard reasons"):
        GuardOptions.for_model(True, ("typo",))


def test_a_surviving_loop_is_cut_back_to_one_occurrence():
    assert collapse_repeats("在三樓復復復復復復") == "在三樓復"
    assert collapse_repeats("問題【【【【【【") == "問題【"
    assert collapse_repeats("the model the model the model the model is") == "the model is"
    for kept in ("一共 1000000 元", "我們今天要講的是 gradient descent", "哈哈"):
        assert collapse_repeats(kept) == kept


def test_joining_puts_no_space_between_cjk_ends():
    assert join_texts(["我們用", "gradient descent", "來訓練", "。", "OK"]) == "我們用 gradient descent 來訓練。 OK"


def test_the_engine_decodes_with_its_repetition_penalty_on_windows_it_covers(registry):
    """tiny.en on Mandarin said three times over (30 s) loops; with a penalty of 1.3 on the tokens already
    generated it does not (the penalty reaches CTranslate2's generate), but it still does when the penalty
    covers only windows up to 15 s (the default). Which loop flag fires first (the token budget, or the
    compression ratio of a loop that ended early) depends on the CPU's int8 kernels: any loop flag is a loop."""
    clip = np.tile(decode_audio(DATA / "zh_lecture.flac"), 3)[: 16000 * 30]
    results = {}
    for name, penalty in {"none": RepetitionPenalty(), "1.3": RepetitionPenalty(1.3, max_window_s=30.0),
                          "1.3 up to 15 s": RepetitionPenalty(1.3)}.items():
        engine = WhisperEngine(registry.path_of("whisper-tiny.en"), "cpu", [0], "int8",
                               guard=GuardOptions(temperatures=()), repetition=penalty)
        results[name] = engine.transcribe_batch([clip], ["en"], DecodeOptions(beam_size=1))[0]
    assert results["none"].triggered[0] in LOOP_REASONS, results["none"].triggered
    assert not set(results["1.3"].triggered) & set(LOOP_REASONS), results["1.3"].triggered
    assert results["1.3"].tokens <= engine.guard.budget(30.0)
    # the same decode on the same CPU, thread count and options: the uncovered window is decoded as without one
    assert results["1.3 up to 15 s"].text == results["none"].text
    assert results["1.3 up to 15 s"].triggered == results["none"].triggered


@pytest.fixture(scope="module")
def base(registry) -> WhisperEngine:
    return WhisperEngine(registry.path_of("whisper-base"), "cpu", [0], "int8")


class Counting:
    """A CTranslate2 model whose method calls are counted (its own attributes are read-only)."""

    def __init__(self, model):
        self.model, self.calls = model, Counter()

    def __getattr__(self, name):
        attr = getattr(self.model, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return counted


def test_a_second_instance_decodes_what_the_first_encoded_and_a_fallback_encodes_once(registry, base):
    """On a CPU the decoder runs on its own instance (1 thread): same transcripts as one instance; and
    Whisper's temperature fallback reuses one encoding of the window for every temperature."""
    split = WhisperEngine(registry.path_of("whisper-base"), "cpu", [0], "int8", cpu_threads=2, decode_threads=1)
    assert split.decoder is not split.model and base.decoder is base.model
    clips = [decode_audio(DATA / name) for name in ("zh_lecture.flac", "mixed_gradient.flac")]
    one, two = (engine.transcribe_batch(clips, ["zh", "zh"], DecodeOptions()) for engine in (base, split))
    assert [r.text for r in two] == [r.text for r in one] and all(r.text for r in two)
    split.model, split.decoder = Counting(split.model), Counting(split.decoder)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000 * 30) / 16000)).astype(np.float32)
    result = split.transcribe_batch([tone], ["zh"], DecodeOptions(beam_size=1))[0]
    assert len(result.triggered) >= 3  # the first decode and at least two sampled ones were flagged
    assert split.decoder.calls["generate"] >= 3 and split.model.calls == {"encode": 2}  # batch + the fallback


def test_an_encoding_is_never_taken_for_mel_features(registry):
    """At 160 frames (1.6 s) an encoding is (1, 80, 512), which CTranslate2 takes for 80-mel features and
    encodes again (an empty transcript, measured): such windows get 2 frames more."""
    clip = decode_audio(DATA / "zh_lecture.flac")[: int(16000 * 1.2)]
    policy = ContextPolicy(0.4, 0.4)  # 1.2 s + 0.4 s, rounded up to 0.4 s: 160 frames
    texts = []
    for decode_threads in (0, 1):  # generate encodes the mel features itself; the second instance gets an encoding
        engine = WhisperEngine(registry.path_of("whisper-base"), "cpu", [0], "int8", cpu_threads=2,
                               decode_threads=decode_threads, policy=policy, guard=GuardOptions(temperatures=()))
        assert engine.frames(clip) == 160 and engine._features([clip]).shape[-1] == 162
        texts.append(engine.transcribe_batch([clip], ["zh"], DecodeOptions(beam_size=1))[0].text)
    assert texts[1] and texts[1] == texts[0]


def test_a_looping_window_is_cut_at_its_budget_and_flagged(base):
    """30 s of a pure tone with VAD off: Whisper base loops; the budget stops it and says why."""
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000 * 30) / 16000)).astype(np.float32)
    result = base.transcribe_batch([tone], ["zh"], DecodeOptions(beam_size=1))[0]
    assert result.triggered and result.triggered[0] in ("token_budget", "compression_ratio")
    assert result.tokens <= base.guard.budget(30.0) + 1
    assert "\ufffd" not in result.text


def test_a_loop_no_fallback_cures_is_cut_back(registry):
    """tiny.en loops on Mandarin said three times over ("tien tien wa r man … tien tien tien…"); with no
    sampling fallback configured, the response keeps the window's start and drops the repeated tail."""
    engine = WhisperEngine(registry.path_of("whisper-tiny.en"), "cpu", [0], "int8", guard=GuardOptions(temperatures=()))
    clip = np.tile(decode_audio(DATA / "zh_lecture.flac"), 3)[: 16000 * 30]
    result = engine.transcribe_batch([clip], ["en"], DecodeOptions(beam_size=1))[0]
    assert result.flag in LOOP_REASONS and result.triggered[-1] == "trimmed"
    assert result.text and collapse_repeats(result.text) == result.text
    assert len(raw_units(result.text)) < 30  # the budget alone leaves ~100 tokens of loop


def test_short_context_windows_batch_by_bucket_and_keep_their_order(base, manifest_rows):
    """Each generate call gets one feature shape (the scheduler's batch key), and every window gets
    its own transcript back (int8 numerics vary slightly with batch composition, so texts are
    checked against references rather than for byte equality)."""
    from k2d.scoring import mer

    engine = WhisperEngine(base.path, "cpu", [0], "int8", policy=ContextPolicy(2.0, 2.0),
                           guard=GuardOptions(temperatures=()))  # no sampling: deterministic
    rows = [row for row in manifest_rows if row.text]
    clips = [decode_audio(DATA / row.audio) for row in rows]
    shapes: list[set[int]] = []
    real = engine.transcribe_batch

    def spy(windows, languages, options):
        shapes.append({engine.frames(w) for w in windows})
        return real(windows, languages, options)

    engine.transcribe_batch = spy
    results = decode_windows(engine, clips, "zh", DecodeOptions(beam_size=1))
    assert len(shapes) == len({engine.frames(c) for c in clips}) > 1 and all(len(s) == 1 for s in shapes)
    for i, text in ((i, r.text) for i, r in enumerate(results) if not r.flag):  # the stock encoder may loop here
        own = mer(rows[i].text, text)
        assert all(own < mer(other.text, text) for j, other in enumerate(rows) if j != i), (i, text)


def transcribe(engine, audio, language, options, vad=True, teacher=None, teacher_sampling="all"):
    """An engine (and a teacher engine) through the served path, without a registry."""
    policy = DecodePolicy(vad=vad, teacher_sampling=teacher_sampling)
    behind = Served("teacher", None, teacher, DecodePolicy()) if teacher is not None else None
    return Transcriber(Served("model", None, engine, policy, behind)).transcribe(audio, language, options)


def test_flagged_student_windows_fall_back_to_the_teacher(registry, base):
    """A student whose guard flags everything (a 2-token budget) returns the teacher's transcript."""
    student = WhisperEngine(registry.path_of("whisper-tiny.en"), "cpu", [0], "int8",
                            guard=GuardOptions.for_model(True, tokens_per_s=0.1, min_tokens=2))
    audio = decode_audio(DATA / "en_lecture.flac")
    options = DecodeOptions(beam_size=1)
    alone = transcribe(student, audio, "en", options)
    assert alone.flagged == len(alone.windows) > 0 and alone.fallbacks == 0
    guarded = transcribe(student, audio, "en", options, teacher=base)
    teacher = transcribe(base, audio, "en", options)
    assert guarded.fallbacks == len(guarded.windows) and guarded.flagged == 0
    assert guarded.text == teacher.text and "gradient" in guarded.text.lower()
    assert all(s.from_teacher for w in guarded.windows for s in w.segments)
    assert all(s.from_teacher for s in guarded.segments) and guarded.segments[-1].end <= len(audio) / 16000


def test_a_standing_in_teacher_can_decode_once_instead_of_sampling(base):
    """A flagged window is re-decoded by sampling unless the options say otherwise; the cascade passes
    that choice to the teacher standing in (``teacher_sampling``; the server's K2D_TEACHER_SAMPLING);
    "loops" samples on a loop but not on mere low confidence."""
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000 * 30) / 16000)).astype(np.float32)
    calls: list[bool] = []
    real = base._generate

    def spy(storage, windows, languages, options, temperature):
        calls.append(temperature > 0)
        return real(storage, windows, languages, options, temperature)

    assert DecodeOptions(temperature_fallback="loops").samples("token_budget")
    assert not DecodeOptions(temperature_fallback="loops").samples("logprob")
    assert not DecodeOptions(temperature_fallback="none").samples("logprob")
    base._generate = spy
    try:
        once = base.transcribe_batch([tone], ["zh"], DecodeOptions(beam_size=1, temperature_fallback="none"))[0]
        assert once.flag and calls == [False]
        calls.clear()
        base.transcribe_batch([tone], ["zh"], DecodeOptions(beam_size=1))
        assert calls[0] is False and any(calls[1:])  # Whisper's temperature fallback ran

        student = WhisperEngine(base.path, "cpu", [0], "int8", guard=GuardOptions.for_model(True))
        calls.clear()
        guarded = transcribe(student, tone, "zh", DecodeOptions(beam_size=1), vad=False, teacher=base,
                             teacher_sampling="none")
        assert guarded.fallbacks == 1 and calls == [False]
        calls.clear()
        looping = transcribe(student, tone, "zh", DecodeOptions(beam_size=1), vad=False, teacher=base,
                             teacher_sampling="loops")  # the tone loops: a loop is sampled on
        assert looping.fallbacks == 1 and calls[0] is False and any(calls[1:])
    finally:
        del base._generate


@pytest.mark.parametrize("decode_threads", [0, 1])
def test_a_fresh_engine_samples_from_the_fixed_seed(registry, decode_threads):
    """CTranslate2 seeds a worker's generator at its first draw, so the engine seeds before loading: two
    fresh engines sample the same window alike, whatever seed the process had before each was built
    (also when a second instance decodes)."""
    import ctranslate2

    clip = decode_audio(DATA / "en_lecture.flac")[: 16000 * 10]
    samples = []
    for seed in (1, 2):
        ctranslate2.set_random_seed(seed)  # what another caller might have left behind
        engine = WhisperEngine(registry.path_of("whisper-tiny.en"), "cpu", [0], "int8", cpu_threads=2,
                               decode_threads=decode_threads)
        storage = ctranslate2.StorageView.from_array(engine._features([clip]))
        samples.append([engine._generate(storage, [clip], ["en"], DecodeOptions(beam_size=1), 1.0)[0].text
                        for _ in range(3)])
    assert samples[0] == samples[1]
