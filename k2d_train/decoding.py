"""Batched decoding of ≤ 30 s clips with a CTranslate2 Whisper (one ``generate`` per batch).

Validation, N-best labelling and evaluation all decode many short, independent clips; batching
them through ``generate`` is several times faster on CPU than transcribing one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from k2d_train.features import whisper_features


def whisper_prompt(tokenizer, language: str | None, timestamps: bool = True) -> list[int]:
    """``<|sot|><|lang|><|transcribe|>`` (multilingual) or ``<|sot|>`` (English-only), then
    ``<|notimestamps|>`` unless timestamps are wanted. Takes a transformers or a ``tokenizers``
    tokenizer: both expose ``get_vocab()`` with the special tokens."""
    vocab = tokenizer.get_vocab()
    tokens = ["<|startoftranscript|>"]
    if "<|zh|>" in vocab:
        tokens += [f"<|{language or 'en'}|>", "<|transcribe|>"]
    if not timestamps:
        tokens.append("<|notimestamps|>")
    return [vocab[t] for t in tokens]


def generate_texts(whisper, audios: Sequence[np.ndarray], language: str | None, beam_size: int = 1,
                   batch_size: int = 8, timestamps: bool = False, num_hypotheses: int = 1) -> list[list[str]]:
    """For each clip, ``num_hypotheses`` decoded texts (best first); timestamps kept as tokens."""
    import ctranslate2

    prompt = whisper_prompt(whisper.hf_tokenizer, language, timestamps)
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
