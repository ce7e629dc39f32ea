"""One CTranslate2 Whisper model: a batch of ≤ 30 s windows in, guarded, timestamped segments out.

The batch may mix windows of different requests; everything that must be equal inside one
``generate`` call (task, beam size, temperature, timestamps, prompt, and the number of feature
frames the model's ``ContextPolicy`` gives the window) is the batch key built by the scheduler.
Language may differ per window: each window gets its own prompt. Every window passes the loop
guard; flagged windows are re-decoded at rising temperatures (Whisper's fallback) unless the
caller cascades them to a teacher instead. CTranslate2 releases the GIL, so several worker
threads run batches truly in parallel (on GPUs: one replica per device index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from k2d.audio import SAMPLE_RATE
from k2d.context import ENCODER_FRAME_S, FRAMES_PER_S, ContextPolicy
from k2d.engine_contract import Capabilities
from k2d.features import log_mel
from k2d.guard import LOOP_REASONS, GuardOptions, RepetitionPenalty, SampleOn, check, collapse_repeats
from k2d.textunits import is_han, join_texts
from k2d.vocabulary import MULTILINGUAL_VOCAB, trimmed_from

TIME_PER_TIMESTAMP = ENCODER_FRAME_S  # Whisper's timestamp tokens step by one encoder frame
HOP_LENGTH = SAMPLE_RATE // FRAMES_PER_S  # samples per mel frame
MAX_POSITIONS = 448  # the decoder's positions, prompt included
# CTranslate2's Whisper.generate(max_length=N) yields at most N // 2 new tokens (measured, 4.8.5)
GENERATE_LENGTH_FACTOR = 2
NO_SPEECH_THRESHOLD = 0.6
# CTranslate2 seeds each worker thread's generator once, at its first draw (a thread_local mt19937 in
# random.cc), so seeding again before each window changes nothing (measured: three draws, each after
# set_random_seed(0), differ). Seeding before a model's first draw is what it offers: with one replica
# (one worker thread per model), a process that samples the same windows in the same order samples the same.
SAMPLING_SEED = 0
LOGPROB_THRESHOLD = -1.0


@dataclass(frozen=True)
class DecodeOptions:
    """What a batch must share; ``language`` is per window and is not part of the key."""

    task: str = "transcribe"
    beam_size: int = 5
    temperature: float = 0.0
    timestamps: bool = True
    word_timestamps: bool = False
    prompt: str | None = None  # initial prompt (previous text / vocabulary), as in Whisper
    # temperature fallback: which flagged windows are re-decoded by sampling at the guard's temperatures — "all"
    # (Whisper's rule), "loops" (not merely unsure ones) or "none"; a teacher standing in may sample less
    temperature_fallback: SampleOn = "all"

    def key(self) -> tuple:
        return (self.task, self.beam_size, round(self.temperature, 3), self.timestamps, self.word_timestamps,
                self.prompt or "", self.temperature_fallback)

    def samples(self, flag: str) -> bool:
        """Whether a window flagged ``flag`` is re-decoded at higher temperatures."""
        return self.temperature_fallback == "all" or (self.temperature_fallback == "loops" and flag in LOOP_REASONS)


@dataclass
class Segment:
    start: float
    end: float
    text: str
    tokens: list[int]
    words: list[dict] | None = None
    from_teacher: bool = False  # teacher fallback: decoded by the teacher because the student's window looped


@dataclass
class WindowResult:
    language: str
    segments: list[Segment]
    tokens: int
    flag: str | None = None  # why the final transcript is still suspect (None: it passed the guard)
    triggered: list[str] = field(default_factory=list)  # every guard reason seen on the way
    avg_logprob: float = 0.0
    from_teacher: bool = False  # this is the teacher's answer for a student's flagged window
    escalate: bool = False  # flagged for a reason that sends a student's window to its teacher

    @property
    def text(self) -> str:
        return join_texts([s.text for s in self.segments])

    def trim_loop(self) -> bool:
        """Cut a loop that survived every fallback: repeated runs inside a segment collapse to one, and a
        segment that repeats the previous one is dropped (words past the cut go with it). True if cut."""
        before = self.text
        kept: list[Segment] = []
        for segment in self.segments:
            text = collapse_repeats(segment.text)
            if kept and text.strip() == kept[-1].text.strip():
                continue
            if text != segment.text and segment.words:
                segment.words = _words_within(segment.words, text)
            segment.text = text
            kept.append(segment)
        self.segments = kept
        if self.text == before:
            return False
        self.triggered = [*self.triggered, "trimmed"]
        return True

    def answering_for(self, flagged: WindowResult) -> WindowResult:
        """This (teacher) result replaces a flagged student window: say so on it and its segments."""
        self.from_teacher, self.triggered = True, flagged.triggered + self.triggered
        for segment in self.segments:
            segment.from_teacher = True
        return self


def cuda_available() -> bool:
    """Whether CTranslate2 sees a GPU: what ``auto`` resolves to, for the server and the training stages."""
    import ctranslate2

    return ctranslate2.get_cuda_device_count() > 0


def _rank(result: WindowResult) -> tuple[bool, float]:
    """Among flagged attempts a loop never wins: a loop is confident (high log-probability) and wrong."""
    return result.flag not in LOOP_REASONS, result.avg_logprob


def _words_within(words: list[dict], text: str) -> list[dict]:
    """The leading words whose concatenation still fits in ``text`` (what a trimmed segment says)."""
    kept, said = [], ""
    for word in words:
        said += word["word"]
        if not text.strip().startswith(said.strip()):
            break
        kept.append(word)
    return kept


class WhisperEngine:
    """Whisper on CTranslate2 (the ``whisper`` kind of :mod:`k2d.engine_contract`)."""

    def __init__(self, path: Path, device: str, device_index: list[int], compute_type: str,
                 replicas: int = 1, cpu_threads: int = 0, guard: GuardOptions | None = None,
                 policy: ContextPolicy | None = None, repetition: RepetitionPenalty | None = None,
                 decode_threads: int = 0):
        """``repetition``: the model's own penalty on tokens already generated (its registry entry's).

        ``decode_threads`` (CPU only; 0: the encoder's ``cpu_threads``): a second instance of the model,
        with that many intra-op threads, decodes what the first encoded. A decoding step is a chain of
        small products for which a second thread costs more in synchronisation than it saves, while
        the encoder's large products scale with threads (2 cores, demo dev set: teacher p50 925 → 865 ms,
        student 269 → 221 ms from 2 threads for both to decoding with 1; README, "Threads and the
        fallback's encoder")."""
        import ctranslate2
        from tokenizers import Tokenizer

        ctranslate2.set_random_seed(SAMPLING_SEED)
        self.model = ctranslate2.models.Whisper(
            str(path), device=device, device_index=device_index, compute_type=compute_type,
            inter_threads=replicas, intra_threads=cpu_threads,
        )
        self.decoder = self.model  # what generates from the encoder's output
        if device == "cpu" and decode_threads and decode_threads != cpu_threads:
            self.decoder = ctranslate2.models.Whisper(str(path), device="cpu", compute_type=compute_type,
                                                      inter_threads=replicas, intra_threads=decode_threads)
        self.path = Path(path)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        preprocessor = path / "preprocessor_config.json"
        self.mels = json.loads(preprocessor.read_text()).get("feature_size", 80) if preprocessor.exists() else 80
        self.id = {t: self.tokenizer.token_to_id(t) for t in
                   ("<|startoftranscript|>", "<|transcribe|>", "<|translate|>", "<|notimestamps|>", "<|endoftext|>",
                    "<|startofprev|>")}
        self.timestamp_begin = self.id["<|notimestamps|>"] + 1
        # CTranslate2 knows a multilingual Whisper by its full vocabulary; a trimmed one by the size it came from
        self.multilingual = self.model.is_multilingual or (trimmed_from(path) or 0) >= MULTILINGUAL_VOCAB
        self.capabilities = Capabilities(multilingual=self.multilingual, prompts=True, translates=self.multilingual,
                                         word_timestamps=True, loops=True,
                                         detects_language=self.model.is_multilingual or not self.multilingual)
        self.workers = max(1, len(device_index)) * replicas
        # faster-whisper's rule: encoder outputs must come back to the host when several GPUs share a model
        self.to_cpu = device == "cuda" and len(device_index) > 1
        self.guard = guard or GuardOptions()
        self.policy = policy or ContextPolicy.of_model(path)
        self.repetition = repetition or RepetitionPenalty()

    def frames(self, window: np.ndarray) -> int:
        """Feature frames this model's context policy gives a window (part of the batch key)."""
        return self.policy.frames(len(window))

    def batch_options(self, options: DecodeOptions) -> tuple:
        """Whisper honours every decode option: all of them key its batches."""
        return options.key()

    def _features(self, windows: list[np.ndarray]) -> np.ndarray:
        frames = max(self.frames(w) for w in windows)
        if frames // 2 == self.mels:
            # CTranslate2 tells encoder output (batch, frames / 2, width) from mel features (batch, mels,
            # frames) by its second dimension: at frames / 2 == mels it would encode the encoding again
            frames += 2
        return np.stack([log_mel(w, frames, num_mel_bins=self.mels) for w in windows])

    def _encode(self, features: np.ndarray):
        import ctranslate2

        return self.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=self.to_cpu)

    def knows_language(self, language: str) -> bool:
        """English-only Whisper: en; multilingual: every language its tokenizer has a token for."""
        if not self.multilingual:
            return language == "en"
        return self.tokenizer.token_to_id(f"<|{language}|>") is not None

    def encoder_ms(self, audio: np.ndarray) -> float:
        """Encoder-only time for one utterance (its first 30 s) at this model's context: where the time goes."""
        import time

        import ctranslate2

        storage = ctranslate2.StorageView.from_array(self._features([audio[: 30 * SAMPLE_RATE]]))
        start = time.perf_counter()
        self.model.encode(storage, to_cpu=True)  # back on the host: the time includes the work, not its launch
        return (time.perf_counter() - start) * 1000

    def detect_languages(self, storage) -> list[str]:
        if not self.multilingual:
            return ["en"] * storage.shape[0]
        if not self.capabilities.detects_language:
            raise ValueError(f"{self.path}: its vocabulary was trimmed, and CTranslate2 detects languages only "
                             "with the full one; name the language")
        return [ranked[0][0].strip("<|>") for ranked in self.model.detect_language(storage)]

    def _prompt(self, language: str, options: DecodeOptions) -> list[int]:
        prompt = []
        if options.prompt:
            previous = self.tokenizer.encode(" " + options.prompt.strip(), add_special_tokens=False).ids
            prompt = [self.id["<|startofprev|>"], *previous[-223:]]  # Whisper keeps the last 223 prompt tokens
        prompt.append(self.id["<|startoftranscript|>"])
        if self.multilingual:
            prompt += [self.tokenizer.token_to_id(f"<|{language}|>"), self.id[f"<|{options.task}|>"]]
        if not options.timestamps:
            prompt.append(self.id["<|notimestamps|>"])
        return prompt

    def transcribe_batch(self, windows: list[np.ndarray], languages: list[str | None],
                         options: DecodeOptions) -> list[WindowResult]:
        """Decode, guard, and re-decode flagged windows at the guard's fallback temperatures."""
        import ctranslate2

        features = self._features(windows)
        detect = any(lang is None for lang in languages)
        # encoded here when another instance decodes, or to detect languages; else generate encodes itself
        # (on several GPUs an encoding made here would travel through the host)
        storage = self._encode(features) if self.decoder is not self.model or detect \
            else ctranslate2.StorageView.from_array(features)
        if detect:
            detected = self.detect_languages(storage)
            languages = [lang or found for lang, found in zip(languages, detected, strict=True)]
        for lang in languages:
            if self.multilingual and self.tokenizer.token_to_id(f"<|{lang}|>") is None:
                raise ValueError(f"unknown language {lang!r}")
        out = self._generate(storage, windows, languages, options, options.temperature)
        for i in [i for i, r in enumerate(out) if r.flag and not r.escalate and options.samples(r.flag)]:
            out[i] = self._fall_back(features[i : i + 1], windows[i], languages[i], options, out[i])
        if options.word_timestamps:
            for i, (window, lang) in enumerate(zip(windows, languages, strict=True)):
                self.word_timings(features[i : i + 1], self._prompt(lang, replace(options, timestamps=True)),
                                  out[i].segments, len(window) // HOP_LENGTH)
        for result in out:
            if result.flag in LOOP_REASONS and not result.escalate:  # an escalated one goes to the teacher whole
                result.trim_loop()
        return out

    def _fall_back(self, features: np.ndarray, window: np.ndarray, language: str, options: DecodeOptions,
                   first: WindowResult) -> WindowResult:
        """Whisper's temperature fallback for one flagged window: sample at rising temperatures until
        the guard passes (else keep the most confident attempt that does not loop). One window at a time,
        so the requests that shared its batch do not change its features' numerics; encoded once for
        every temperature (as faster-whisper does), not once per attempt."""
        best = first
        encoded = None
        for temperature in (t for t in self.guard.temperatures if t > options.temperature):
            if encoded is None:
                encoded = self._encode(features)
            (result,) = self._generate(encoded, [window], [language], options, temperature)
            result.triggered = best.triggered + result.triggered
            if not result.flag:
                return result
            if _rank(result) > _rank(best):
                best = result
            else:
                best.triggered = result.triggered
        return best

    def _generate(self, storage, windows: list[np.ndarray], languages: list[str], options: DecodeOptions,
                  temperature: float) -> list[WindowResult]:
        prompts = [self._prompt(lang, options) for lang in languages]
        # the decoder has 448 positions, prompt included; one token past the budget reveals a loop
        budgets = [min(self.guard.budget(len(w) / SAMPLE_RATE), MAX_POSITIONS - len(p) - 1)
                   for w, p in zip(windows, prompts, strict=True)]
        results = self.decoder.generate(
            storage, prompts, beam_size=options.beam_size if temperature == 0 else 1,
            sampling_temperature=temperature if temperature > 0 else 1.0,
            sampling_topk=0 if temperature > 0 else 1,
            max_length=GENERATE_LENGTH_FACTOR * (max(budgets) + 1), suppress_blank=True,
            repetition_penalty=self.repetition.for_window(max(len(w) for w in windows) / SAMPLE_RATE),
            return_scores=True, return_no_speech_prob=True,
        )
        out = []
        for window, lang, result, budget in zip(windows, languages, results, budgets, strict=True):
            ids = result.sequences_ids[0][: budget + 1]
            avg_logprob = result.scores[0] if ids else 0.0
            # Whisper's own rule: likely no speech and a low-confidence transcript -> nothing
            silent = result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD
            kept = [] if silent else ids[:budget]
            segments = self.segments(kept, len(window) / SAMPLE_RATE)
            text = join_texts([s.text for s in segments])
            flag = None if silent else check(text, len(ids), avg_logprob, budget + 1, self.guard)
            out.append(WindowResult(lang, segments, len(ids), flag, [flag] if flag else [], avg_logprob,
                                    escalate=self.guard.escalates(flag)))
        return out

    def word_timings(self, features: np.ndarray, prompt: list[int], segments: list[Segment], num_frames: int) -> None:
        """Word start/end from cross-attention alignment (the model's alignment heads, DTW in CTranslate2)."""
        import ctranslate2

        tokens = [t for seg in segments for t in seg.tokens]
        if not tokens:
            return
        result = self.model.align(ctranslate2.StorageView.from_array(features), prompt,
                                  [tokens + [self.id["<|endoftext|>"]]], num_frames)[0]
        text_index, time_index = (np.array(column) for column in zip(*result.alignments, strict=True))
        jumps = np.pad(np.diff(text_index), (1, 0), constant_values=1).astype(bool)
        times = time_index[jumps] * ENCODER_FRAME_S  # one start time per text token (and the final <|endoftext|>)
        probs = result.text_token_probs
        offset = 0
        for seg in segments:
            seg.words = []
            for word, count in self._words(seg.tokens):
                last = min(offset + count, len(times) - 1)
                seg.words.append({"word": word, "start": round(float(times[min(offset, last)]), 2),
                                  "end": round(float(times[last]), 2),
                                  "probability": round(float(np.mean(probs[offset : offset + count])), 3)})
                offset += count

    def _pieces(self, tokens: list[int]) -> list[tuple[str, int]]:
        """Decodable pieces: byte-level BPE splits one CJK character over several tokens."""
        pieces, group = [], []
        for token in tokens:
            group.append(token)
            text = self.tokenizer.decode(group)
            if "\ufffd" not in text:
                pieces.append((text, len(group)))
                group = []
        if group:
            pieces.append((self.tokenizer.decode(group), len(group)))
        return pieces

    def _words(self, tokens: list[int]) -> list[tuple[str, int]]:
        """Group tokens into words: a leading space starts a word; every CJK character is a word."""
        words: list[list] = []
        for piece, count in self._pieces(tokens):
            cjk = any(is_han(ch) for ch in piece)
            if not words or piece.startswith(" ") or cjk or words[-1][2]:
                words.append([piece, count, cjk])
            else:
                words[-1][0] += piece
                words[-1][1] += count
        return [(text.strip(), count) for text, count, _ in words if text.strip()] or []

    def segments(self, ids: list[int], window_s: float) -> list[Segment]:
        """Split generated ids at timestamp tokens; text without timestamps is one segment."""
        segments: list[Segment] = []
        start, text_ids = 0.0, []
        for token in ids:
            if token >= self.timestamp_begin:
                time = min((token - self.timestamp_begin) * TIME_PER_TIMESTAMP, window_s)
                if text_ids:
                    segments.append(Segment(start, max(start, time), self._text(text_ids), text_ids))
                    text_ids = []
                start = time
            elif token < self.id["<|endoftext|>"]:
                text_ids.append(token)
        if text_ids:
            segments.append(Segment(start, max(start, window_s), self._text(text_ids), text_ids))
        return [s for s in segments if s.text]

    def _text(self, ids: list[int]) -> str:
        """Decoded text; a multi-byte character cut by the budget leaves no replacement character."""
        return self.tokenizer.decode(ids).replace("\ufffd", "").strip()
