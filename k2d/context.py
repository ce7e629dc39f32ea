"""How much audio context a model's encoder sees: Whisper's fixed 30 s, or the clip plus a margin.

Whisper's encoder always processes 30 s (3,000 log-mel frames), so a 4 s utterance pays for 26 s
of padding. CTranslate2 accepts fewer frames (the positional table is cut), but only an encoder
trained for it keeps its accuracy, so the policy is a property of the *model*: written next to
its weights at export (``k2d_context.json``), read by the server and by evaluation.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from k2d.audio import SAMPLE_RATE

FULL_FRAMES = 3000  # 30 s of 10 ms mel frames
FRAMES_PER_S = 100  # mel frames
ENCODER_FRAME_S = 0.02  # the encoder's stride-2 convolution: one output frame per two mel frames
POLICY_FILE = "k2d_context.json"


@dataclass(frozen=True)
class ContextPolicy:
    """``pad_s == 0``: Whisper's 30 s. Otherwise clip + ``pad_s`` rounded up to ``bucket_s``, so
    windows of one bucket share a shape and batch together."""

    pad_s: float = 0.0
    bucket_s: float = 2.0
    # the longest window to serve: longer speech is cut (at pauses) into windows this long, for encoders
    # trained only on shorter inputs (EncoderDistillOptions.serve_max_window_s)
    max_window_s: float = 30.0

    @property
    def full(self) -> bool:
        return self.pad_s <= 0

    def frames(self, samples: int, sample_rate: int = SAMPLE_RATE) -> int:
        """Mel frames the encoder gets for a window of ``samples`` (even, ≤ 3,000)."""
        if self.full:
            return FULL_FRAMES
        seconds = samples / sample_rate + self.pad_s
        bucket = max(self.bucket_s, ENCODER_FRAME_S)
        return mel_frames(math.ceil(seconds / bucket - 1e-9) * bucket)

    @classmethod
    def parse(cls, text: str) -> ContextPolicy:
        """``full`` → Whisper's 30 s; ``2/2`` → audio + 2 s rounded up to 2 s (operator and CLI syntax)."""
        if text == "full":
            return cls()
        pad, _, bucket = text.partition("/")
        return cls(float(pad), float(bucket or 2.0))

    def spec(self) -> str:
        """The operator syntax :meth:`parse` reads (``full`` or ``PAD/BUCKET``): a policy handed on as a
        decode-policy override."""
        return "full" if self.full else f"{self.pad_s:g}/{self.bucket_s:g}"

    def describe(self) -> str:
        if self.full:
            return "30 s (Whisper)"
        longest = f", windows ≤ {self.max_window_s:g} s" if self.max_window_s < 30 else ""
        return f"audio + {self.pad_s:g} s, rounded up to {self.bucket_s:g} s{longest}"

    def save(self, model_dir: Path) -> None:
        (model_dir / POLICY_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def of_model(cls, model_dir: Path) -> ContextPolicy:
        """The policy a model was trained for; models without the file are standard Whisper."""
        path = Path(model_dir) / POLICY_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else cls()


def mel_frames(seconds: float) -> int:
    """Mel frames covering ``seconds`` (even: the encoder's stride-2 convolution halves them), ≤ 3,000."""
    frames = min(FULL_FRAMES, int(math.ceil(seconds * FRAMES_PER_S - 1e-9)))
    return frames + frames % 2

