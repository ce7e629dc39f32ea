"""Tokenizer, feature extractor and generation config that travel with a Whisper model.

A checkpoint is only usable offline when these are complete: timestamp tokens in the tokenizer
(pseudo labels keep timestamps), a ``preprocessor_config.json`` (else faster-whisper silently
falls back to defaults), and a generation config with ``lang_to_id``/``task_to_id`` and
alignment heads (transformers 5.x no longer derives them from the tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path

from k2d.vocabulary import MULTILINGUAL_VOCAB, vocabulary_size

TIMESTAMP_COUNT = 1501  # <|0.00|> .. <|30.00|> in steps of 0.02 s


class AssetError(ValueError):
    """A tokenizer or config that is missing or cannot belong to this model."""


def timestamp_token(index: int) -> str:
    return f"<|{index * 0.02:.2f}|>"


def load_tokenizer_json(path: Path) -> dict:
    if not path.is_file():
        raise AssetError(f"{path.parent}: missing tokenizer.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AssetError(f"{path}: tokenizer.json is not valid JSON ({err})") from err


def with_timestamp_tokens(tokenizer: dict) -> dict:
    """Append the 1,501 timestamp tokens when an older tokenizer.json lacks them.

    The flags copy those of the newer Whisper tokenizers (normalized, not special), so text
    with timestamps encodes to the same ids as with the newer files.
    """
    added = tokenizer.get("added_tokens", [])
    if any(token["content"] == timestamp_token(0) for token in added):
        return tokenizer
    start = max(token["id"] for token in added) + 1
    added = added + [
        {
            "id": start + i,
            "content": timestamp_token(i),
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,
            "special": False,
        }
        for i in range(TIMESTAMP_COUNT)
    ]
    return {**tokenizer, "added_tokens": added}


def special_ids(tokenizer: dict) -> dict[str, int]:
    """The ids that prompts and generation configs need, read from the tokenizer itself."""
    ids = {token["content"]: token["id"] for token in tokenizer.get("added_tokens", [])}
    wanted = {
        "eot": "<|endoftext|>",
        "sot": "<|startoftranscript|>",
        "transcribe": "<|transcribe|>",
        "translate": "<|translate|>",
        "prev": "<|startofprev|>",
        "no_timestamps": "<|notimestamps|>",
        "timestamp_begin": timestamp_token(0),
    }
    missing = [token for token in wanted.values() if token not in ids]
    if missing:
        raise AssetError(f"tokenizer.json lacks Whisper special tokens: {missing}")
    return {key: ids[token] for key, token in wanted.items()}


def language_tokens(tokenizer: dict, ct2_config: dict) -> dict[str, int]:
    """``{"<|en|>": 50259, ...}``; English-only models have no language token in their prompt.

    The CTranslate2 converter writes multilingual ``lang_ids`` even for ``.en`` models, whose
    vocabulary is one smaller, so the vocabulary size decides (as in OpenAI's code): for a trimmed model, the
    size it was trimmed from (:mod:`k2d.vocabulary`).
    """
    added = tokenizer.get("added_tokens", [])
    if vocabulary_size(ct2_config, max(token["id"] for token in added) + 1) < MULTILINGUAL_VOCAB:
        return {}
    by_id = {token["id"]: token["content"] for token in added}
    return {by_id[i]: i for i in ct2_config.get("lang_ids", []) if i in by_id}


def languages(lang_to_id: dict[str, int]) -> list[str]:
    return [token.strip("<|>") for token in lang_to_id] or ["en"]


def check_vocabulary(tokenizer: dict, vocab_size: int) -> None:
    size = max(token["id"] for token in tokenizer["added_tokens"]) + 1
    if size != vocab_size:
        raise AssetError(f"tokenizer has {size} ids but the model's vocabulary has {vocab_size}: wrong tokenizer")


def generation_config(tokenizer: dict, ct2_config: dict, max_length: int):  # -> GenerationConfig
    from transformers import GenerationConfig

    ids = special_ids(tokenizer)
    lang_to_id = language_tokens(tokenizer, ct2_config)
    return GenerationConfig(
        decoder_start_token_id=ids["sot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        max_length=max_length,
        lang_to_id=lang_to_id,
        task_to_id={"transcribe": ids["transcribe"], "translate": ids["translate"]},
        is_multilingual=bool(lang_to_id),
        no_timestamps_token_id=ids["no_timestamps"],
        prev_sot_token_id=ids["prev"],
        max_initial_timestamp_index=50,
        alignment_heads=[list(pair) for pair in ct2_config.get("alignment_heads", [])],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
    )


def feature_extractor(num_mel_bins: int):  # -> WhisperFeatureExtractor
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=num_mel_bins)


def write_preprocessor_config(directory: Path, num_mel_bins: int) -> None:
    """faster-whisper reads ``feature_size`` from here; without it, 80 mels are assumed."""
    feature_extractor(num_mel_bins).save_pretrained(directory)
