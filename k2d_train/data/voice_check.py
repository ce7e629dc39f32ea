"""Measure how well the teacher understands each registered voice: ``python -m k2d_train.data.voice_check``.

A voice the teacher cannot understand yields pseudo-labels that are noise, and a held-out voice the
teacher cannot understand makes an OOD score meaningless; this check is how the registry in
:mod:`k2d_train.data.voices` was chosen (its docstring states the protocol, MEASURED_MER the result).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from k2d.audio import SAMPLE_RATE
from k2d.scoring import ErrorCounts, cer_zh_counts, mer_counts, wer_en_counts
from k2d_train.data.sentences import ood_sentence_bank, sentence_bank
from k2d_train.data.voices import DROPPED_SPECS, VOICES, VoiceSpec, speak_mixed, voice

REFERENCE = {"zh": "gcin-3", "en": "piper-joe"}  # the partner voice while the other language is measured


def check_sentences(count: int = 12) -> list[str]:
    """Half lecture sentences, half OOD sentences, a third of them with two English terms (English words are
    few otherwise): every voice is judged on the same, mixed material."""
    def two_terms(bank: list[str]) -> list[str]:
        return [s for s in bank if len(re.findall(r"[A-Za-z]+", s)) >= 3]

    single, double = count - count // 3, count // 3
    ind, ood = sentence_bank(1), ood_sentence_bank(1)
    return (ind[: single // 2] + ood[: single - single // 2] + two_terms(ind)[: double // 2]
            + two_terms(ood)[: double - double // 2])


def _capped(counts: ErrorCounts) -> ErrorCounts:
    return ErrorCounts(min(counts.errors, counts.reference), counts.reference)


def measure(spec: VoiceSpec, model, sentences: list[str]) -> dict:
    """Pooled MER (per-sentence errors capped at the sentence length) and the error rate of the voice's own language."""
    partner = voice(REFERENCE["en" if spec.language == "zh" else "zh"])
    mandarin, english = (spec, partner) if spec.language == "zh" else (partner, spec)
    total, own = ErrorCounts(), ErrorCounts()
    for text in sentences:
        pad = np.zeros(SAMPLE_RATE // 4, dtype=np.float32)
        audio = speak_mixed(text, mandarin, english)
        audio = np.concatenate([pad, 0.7 * audio / max(float(np.abs(audio).max()), 1e-6), pad])
        segments, _ = model.transcribe(audio, language="zh", beam_size=1, temperature=0.0,
                                       condition_on_previous_text=False, without_timestamps=True)
        hypothesis = "".join(s.text for s in segments)
        total += _capped(mer_counts(text, hypothesis))
        own += _capped((cer_zh_counts if spec.language == "zh" else wer_en_counts)(text, hypothesis))
    return {"voice": spec.name, "language": spec.language, "heldout": spec.heldout, "mer": round(total.rate, 3),
            "own_language_error": round(own.rate, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/whisper-base/ct2"))
    parser.add_argument("--sentences", type=int, default=12)
    parser.add_argument("--dropped", action="store_true", help="also re-measure the dropped voices")
    parser.add_argument("--only", nargs="*", default=None, help="voice names to measure")
    args = parser.parse_args()
    from faster_whisper import WhisperModel

    model = WhisperModel(str(args.model), device="cpu", compute_type="int8", cpu_threads=2)
    specs = list(VOICES) + (list(DROPPED_SPECS) if args.dropped else [])
    specs = [s for s in specs if args.only is None or s.name in args.only]
    sentences = check_sentences(args.sentences)
    for spec in specs:
        start = time.perf_counter()
        row = measure(spec, model, sentences)
        print(json.dumps({**row, "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
