"""What a Whisper folder says about its vocabulary, for the serving side (no torch, no ctranslate2 import).

CTranslate2 and whisper.cpp tell a multilingual Whisper from an English-only one by the size of its vocabulary
(51,865 vs 51,864 tokens). A model whose output layer was trimmed to the tokens of its languages
(``k2d_train.store.trim_vocabulary``) keeps every language token but not that size, so its ``config.json``
records the size it was trimmed from, and that size decides instead.
"""

from __future__ import annotations

import json
from pathlib import Path

MULTILINGUAL_VOCAB = 51865
TRIMMED_FROM = "trimmed_from_vocabulary_size"  # config.json key of a trimmed model
VOCABULARY_FILE = "k2d_vocabulary.json"  # a trimmed model's original ids, in order (provenance, untrimming)


def trimmed_from(model_dir: Path) -> int | None:
    """The vocabulary size a trimmed model came from; None for an untrimmed one."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text(encoding="utf-8")).get(TRIMMED_FROM)


def vocabulary_size(config: dict, actual: int) -> int:
    """The size that says whether the model is multilingual: the original one for a trimmed model."""
    return int(config.get(TRIMMED_FROM, actual))
