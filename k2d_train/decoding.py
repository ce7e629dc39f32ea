"""Batched decoding of ≤ 30 s clips with a CTranslate2 Whisper (one ``generate`` per batch).

Validation, N-best labelling and evaluation all decode many short, independent clips; batching
them through ``generate`` is several times faster on CPU than transcribing one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from k2d_train.features import whisper_features


def prompt_ids(whisper, language: str | None, timestamps: bool) -> list[int]:
    tokenizer = whisper.hf_tokenizer
    tokens = ["<|startoftranscript|>"]
    if whisper.model.is_multilingual:
        tokens += [f"<|{language or 'en'}|>", "<|transcribe|>"]
    if not timestamps:
        tokens.append("<|notimestamps|>")
    return [tokenizer.token_to_id(t) for t in tokens]


def generate_texts(whisper, audios: Sequence[np.ndarray], language: str | None, beam_size: int = 1,
                   batch_size: int = 8, timestamps: bool = False, num_hypotheses: int = 1) -> list[list[str]]:
    """For each clip, ``num_hypotheses`` decoded texts (best first); timestamps kept as tokens."""
    import ctranslate2

    prompt = prompt_ids(whisper, language, timestamps)
    out: list[list[str]] = []
    for begin in range(0, len(audios), batch_size):
        batch = [whisper_features(a, whisper.feature_extractor) for a in audios[begin : begin + batch_size]]
        results = whisper.model.generate(
            ctranslate2.StorageView.from_array(np.stack(batch)), [prompt] * len(batch),
            beam_size=max(beam_size, num_hypotheses), num_hypotheses=num_hypotheses, max_length=448,
        )
        for result in results:
            out.append([whisper.hf_tokenizer.decode(ids, skip_special_tokens=not timestamps).strip()
                        for ids in result.sequences_ids])
    return out
