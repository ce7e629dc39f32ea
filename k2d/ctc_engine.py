"""A CTC student served by ONNX Runtime: the distilled encoder plus a non-autoregressive head (and the head
machinery the transducer, ``k2d.transducer_engine``, shares).

Whisper's decoder generates one token per step and can repeat itself until its budget runs out; a CTC
head labels every encoder frame at once (one forward pass, then a greedy collapse), and a transducer
emits at most a few units per frame — neither can loop, so there is no guard and no teacher fallback to
pay for. It implements the serving contract (:class:`k2d.engine_contract.Engine`, kinds ``ctc`` and ``transducer``).
Timestamps come from the alignment: the frame at which each unit is emitted (20 ms steps).

Why ONNX Runtime: the model is an encoder and a small head, which is exactly what ONNX Runtime runs well
on CPUs and GPUs (int8 dynamic quantisation, one session shared by every worker thread) — no tokenizer
or beam search to carry, and it is already one of the service's dependencies (faster-whisper's VAD).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from k2d.audio import SAMPLE_RATE
from k2d.context import ENCODER_FRAME_S, ContextPolicy
from k2d.engine import DecodeOptions, Segment, WindowResult
from k2d.engine_contract import Capabilities
from k2d.features import log_mel
from k2d.guard import GuardOptions, RepetitionPenalty
from k2d.textunits import is_han
from k2d.units import WORD_START, Units

HEAD_FILE = "k2d_head.json"  # {"kind": "ctc" | "transducer", "language": "zh", ...}
MODEL_FILE = "model.onnx"  # mel (B, mels, frames) → CTC log-probs (B, T, V) or transducer encoder (B, T, J)
JOINER_FILE = "transducer.npz"  # the transducer's predictor and joiner weights (k2d.transducer_engine)
SEGMENT_GAP_S = 0.8  # a pause this long between two units starts a new segment


@dataclass(frozen=True)
class HeadDecodeOptions:
    """What a CTC / transducer head honours of a request's options: no beam, temperature, prompt or task (it has
    no decoder to search, sample, prompt or translate with), only whether words get their own times."""

    word_timestamps: bool = False


class HeadEngine:
    """What a CTC and a transducer head share: the ONNX session over mel features, the units, segments and
    words from (frame, unit) emissions. A subclass says how frames become emissions (:meth:`emit`)."""

    def __init__(self, path: Path, device: str = "cpu", replicas: int = 1, cpu_threads: int = 0,
                 policy: ContextPolicy | None = None):
        import onnxruntime

        self.path = Path(path)
        self.head = json.loads((self.path / HEAD_FILE).read_text())
        self.kind = self.head["kind"]
        self.units = Units.load(self.path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = cpu_threads
        options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.session = onnxruntime.InferenceSession(str(self.path / MODEL_FILE), options, providers=providers)
        self.policy = policy or ContextPolicy.of_model(self.path)
        self.mels = int(self.head.get("mels", 80))
        self.language = self.head.get("language", "zh")
        self.workers = max(1, replicas)
        self.guard = GuardOptions(enabled=False)  # nothing to guard: no decoder that can loop
        self.repetition = RepetitionPenalty()
        # one language, no decoder to prompt or to loop; a streaming CTC head transcribes live (StreamDecoder)
        self.capabilities = Capabilities(multilingual=False, prompts=False, translates=False, word_timestamps=True,
                                         streaming=self.streams)

    streams = False  # only a CTC head trained on chunked frames transcribes live

    def emit(self, frames: np.ndarray) -> tuple[list[tuple[int, int]], float]:
        """(frame, unit) emissions of one window's usable frames, and a confidence (mean log-prob)."""
        raise NotImplementedError

    def knows_language(self, language: str) -> bool:
        return language == self.language

    def frames(self, window: np.ndarray) -> int:
        return self.policy.frames(len(window))

    def _features(self, windows: list[np.ndarray]) -> np.ndarray:
        frames = max(self.frames(w) for w in windows)
        return np.stack([log_mel(w, frames, num_mel_bins=self.mels) for w in windows])

    def chunked_logprobs(self, audio: np.ndarray) -> np.ndarray:
        """A streaming model's frames of a whole window, computed as live: chunk by chunk with left context
        (what the WebSocket stream decodes), so both paths give the same transcript."""
        from k2d.streaming import StreamWindows

        windows = StreamWindows(**self.head["streaming"])
        kept = []
        for index in range(windows.chunks(len(audio))):
            window, first = windows.window(audio, index)
            kept.append(self.window_logprobs(window)[first : first + windows.chunk_frames])
        return np.concatenate(kept)

    def window_logprobs(self, window: np.ndarray) -> np.ndarray:
        """CTC log-probabilities (T, V) of one window of audio, at this model's context (streaming chunks)."""
        (output,) = self.session.run(None, {"mel": self._features([window])})
        return output[0]

    def encoder_ms(self, audio: np.ndarray) -> float:
        """The whole forward pass (encoder and head: the head is a few percent of it) for one utterance."""
        features = self._features([audio[: 30 * SAMPLE_RATE]])
        start = time.perf_counter()
        self.session.run(None, {"mel": features})
        return (time.perf_counter() - start) * 1000

    def batch_options(self, options: DecodeOptions) -> HeadDecodeOptions:
        return HeadDecodeOptions(options.word_timestamps)

    def transcribe_batch(self, windows: list[np.ndarray], languages: list[str | None],
                         options: DecodeOptions) -> list[WindowResult]:
        outputs = [self.chunked_logprobs(w) for w in windows] if self.streams else \
            self.session.run(None, {"mel": self._features(windows)})[0]
        results = []
        for window, frames in zip(windows, outputs, strict=True):
            usable = min(len(frames), int(np.ceil(len(window) / SAMPLE_RATE / ENCODER_FRAME_S)) + 1)
            emitted, confidence = self.emit(frames[:usable])
            segments = self.segments(emitted, len(window) / SAMPLE_RATE, options.word_timestamps)
            results.append(WindowResult(self.language, segments, len(emitted), avg_logprob=confidence))
        return results

    def segments(self, emitted: list[tuple[int, int]], window_s: float, words: bool) -> list[Segment]:
        """(frame, unit) pairs → segments split at pauses, each unit placed at the frame it was emitted."""
        groups: list[list[tuple[int, int]]] = []
        for frame, unit in emitted:
            if groups and (frame - groups[-1][-1][0]) * ENCODER_FRAME_S < SEGMENT_GAP_S:
                groups[-1].append((frame, unit))
            else:
                groups.append([(frame, unit)])
        out = []
        for group in groups:
            start = group[0][0] * ENCODER_FRAME_S
            end = min(window_s, (group[-1][0] + 1) * ENCODER_FRAME_S)
            segment = Segment(round(start, 2), round(max(start, end), 2), self.units.text([u for _, u in group]),
                              [u for _, u in group])
            if words:
                segment.words = self._words(group, window_s)
            out.append(segment)
        return [s for s in out if s.text]

    def _words(self, group: list[tuple[int, int]], window_s: float) -> list[dict]:
        """Every Mandarin character is a word; English pieces join until the next word start."""
        words: list[dict] = []
        english = False  # the last word is English and still open
        for frame, unit in group:
            symbol = self.units.symbols[unit]
            at = round(frame * ENCODER_FRAME_S, 2)
            han = is_han(symbol[0])
            end = round(min(window_s, at + ENCODER_FRAME_S), 2)
            if english and not han and not symbol.startswith(WORD_START):
                words[-1]["word"] += symbol
                words[-1]["end"] = end
            else:
                words.append({"word": symbol.removeprefix(WORD_START), "start": at, "end": end, "probability": None})
            english = not han
        return [w for w in words if w["word"]]


class CTCEngine(HeadEngine):
    """A CTC head (kind ``ctc``): one forward pass labels every frame, greedy collapse; a head trained on
    chunked frames also streams (:class:`k2d.streaming.StreamDecoder`)."""

    @property
    def streams(self) -> bool:
        """Trained on chunked frames (``distill_ctc.streaming``): it can transcribe live, chunk by chunk."""
        return bool(self.head.get("streaming"))

    def emit(self, frames: np.ndarray) -> tuple[list[tuple[int, int]], float]:
        return ctc_greedy(frames, self.units.blank)


def ctc_greedy(logprobs: np.ndarray, blank: int) -> tuple[list[tuple[int, int]], float]:
    """Best unit per frame, repeats merged, blanks dropped: [(frame, unit)], and the mean best log-prob."""
    best = logprobs.argmax(-1)
    keep = (best != blank) & np.concatenate([[True], best[1:] != best[:-1]])
    frames = np.flatnonzero(keep)
    confidence = float(logprobs.max(-1).mean()) if len(logprobs) else 0.0
    return [(int(f), int(best[f])) for f in frames], confidence
