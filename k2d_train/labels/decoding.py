"""Batched decoding of ≤ 30 s clips with a CTranslate2 Whisper (one ``generate`` per batch).

Validation, N-best labelling and evaluation all decode many short, independent clips; batching
them through ``generate`` is several times faster on CPU than transcribing one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from k2d.features import log_mel


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
    """For each clip, ``num_hypotheses`` decoded texts (best first); timestamps kept as tokens.

    Each batch may generate only the serving guard's token budget for its longest clip: a
    validator that loops on a 2 s segment must not decode 224 tokens for the whole batch."""
    import ctranslate2

    from k2d.engine import GENERATE_LENGTH_FACTOR
    from k2d.guard import GuardOptions

    prompt = whisper_prompt(whisper.hf_tokenizer, language, timestamps)
    out: list[list[str]] = []
    for begin in range(0, len(audios), batch_size):
        clips = audios[begin : begin + batch_size]
        batch = [log_mel(a, extractor=whisper.feature_extractor) for a in clips]
        budget = GuardOptions().budget(max(len(a) for a in clips) / 16000) + (2 * 15 if timestamps else 0)
        results = whisper.model.generate(
            ctranslate2.StorageView.from_array(np.stack(batch)), [prompt] * len(batch),
            beam_size=max(beam_size, num_hypotheses), num_hypotheses=num_hypotheses,
            max_length=min(448, GENERATE_LENGTH_FACTOR * budget),
        )
        for result in results:
            out.append([whisper.hf_tokenizer.decode(ids, skip_special_tokens=not timestamps).strip()
                        for ids in result.sequences_ids])
    return out


def detect_language(model, tokenizer, encoder_hidden) -> str:
    """Whisper's language detection on a transformers model: the most likely language token after
    ``<|startoftranscript|>`` — never a silent default to English."""
    import torch

    vocab = tokenizer.get_vocab()
    if "<|zh|>" not in vocab:
        return "en"
    languages = {token: index for token, index in vocab.items()
                 if token.startswith("<|") and token.endswith("|>") and 2 <= len(token) - 4 <= 3 and token[2:-2].isalpha()}
    with torch.no_grad():
        logits = model(encoder_outputs=(encoder_hidden,),
                       decoder_input_ids=torch.tensor([[vocab["<|startoftranscript|>"]]])).logits[0, -1]
    best = max(languages, key=lambda token: float(logits[languages[token]]))
    return best[2:-2]
