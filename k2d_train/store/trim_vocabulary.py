"""A CTranslate2 Whisper whose output layer keeps only the tokens its language pair needs.

Why: with two decoder layers, Whisper base's decoding time is mostly the output projection — 51,865 rows of
512 (26.6M multiply-adds a token) against ~3.7M for a decoder layer — so dropping four of six layers makes
decoding at most ~1.4× cheaper. A zh-en student emits a few thousand distinct tokens; keeping those (plus the
256 byte tokens, so any text can still be spelled, and every special token) shrinks that product ~5-8×.

Slicing rows of the tied embedding changes nothing else: each kept token keeps its weights (and, in int8,
its row's scale), so its logit is the one the full model computes; only tokens outside the kept set can no
longer be chosen. Ids are renumbered in their original order, which keeps what CTranslate2 and Whisper's
rules rely on: text tokens below ``<|endoftext|>``, the task tokens between ``<|startoftranscript|>`` and
``<|notimestamps|>``, timestamps last and contiguous. CTranslate2 calls a Whisper multilingual only at
exactly 51,865 tokens, so the trimmed config records the size it came from (``TRIMMED_FROM``) for the
registry and the engine, and only CTranslate2's own language detection is lost (the engine says so).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from k2d.context import POLICY_FILE
from k2d.vocabulary import TRIMMED_FROM, VOCABULARY_FILE
from k2d_train.store.ct2_format import read_model_bin, write_model_bin
from k2d_train.store.publish import partial_dir, publish
from k2d_train.store.whisper_assets import AssetError, generation_config, load_tokenizer_json

# the words of the 4,000 most frequent English word tokens of Debian's English fortunes (3,607 words, one a line;
# from k2d_train.data.text_sources.fortunes_en): English a zh-en student's labels never used but users will say
ENGLISH_WORDS = Path(__file__).with_name("english_words.txt")
VOCAB_ROWS = ("decoder/embeddings/weight", "decoder/embeddings/weight_scale")
ID_LISTS = ("suppress_ids", "suppress_ids_begin", "lang_ids")
COPIED = ("preprocessor_config.json", POLICY_FILE)  # features and the served context travel with the weights


def read_texts(paths: Iterable[Path], script: str = "as_is") -> Iterable[str]:
    """Text lines, or the ``text`` / ``teacher_text`` of JSONL rows (a run's kept pseudo-labels, a manifest), in the
    script the student was trained to write (``label_script``: Whisper base's labels mix both scripts)."""
    from k2d.scoring import to_script

    for text in _raw_texts(paths):
        yield to_script(text, script)


def _raw_texts(paths: Iterable[Path]) -> Iterable[str]:
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                yield line
                continue
            row = json.loads(line)
            for field in ("text", "teacher_text"):
                if isinstance(row.get(field), str):
                    yield row[field]


def token_counts(tokenizer, texts: Iterable[str]) -> Counter:
    """How often each token id spells the texts, as a sentence start and after a space (both occur in output)."""
    counts: Counter = Counter()
    for text in texts:
        for variant in (text.strip(), " " + text.strip()):
            counts.update(tokenizer.encode(variant, add_special_tokens=False).ids)
    return counts


def kept_for_texts(source: Path, texts: list[Path], script: str, min_count: int = 1) -> tuple[list[int], int]:
    """The ids :func:`trim` keeps for a model folder and its texts, and how many distinct tokens the texts used
    (its tokenizer.json read once, for both the encoding and the merges)."""
    from tokenizers import Tokenizer

    tokenizer_json = load_tokenizer_json(source / "tokenizer.json")
    counts = token_counts(Tokenizer.from_str(json.dumps(tokenizer_json)), read_texts(texts, script))
    if not counts:
        raise ValueError(f"no text in {', '.join(map(str, texts))}: nothing to choose tokens by")
    return kept_ids(tokenizer_json, counts, min_count), len(counts)


def kept_ids(tokenizer_json: dict, counts: Counter, min_count: int = 1) -> list[int]:
    """The byte alphabet (so nothing becomes unspellable), every token the texts used ``min_count`` times with
    the pieces BPE merges it from (so the texts still encode to the same tokens, as prompts must), and every
    added (special and timestamp) token; sorted, i.e. in their original order."""
    from tokenizers.pre_tokenizers import ByteLevel

    model = tokenizer_json["model"]
    vocab = model["vocab"]
    missing = [ch for ch in ByteLevel.alphabet() if ch not in vocab]
    if missing:
        raise AssetError(f"not a byte-level BPE tokenizer: {len(missing)} byte tokens missing")
    parts: dict[str, list[str]] = {}  # every merge that makes a piece (which one applies depends on the word)
    for pair in map(_pair, model["merges"]):
        parts.setdefault("".join(pair), []).extend(pair)
    token = {i: text for text, i in vocab.items()}
    kept: set[int] = set()
    wanted = [token[i] for i, n in counts.items() if n >= min_count and i in token]
    wanted += ByteLevel.alphabet()
    while wanted:
        piece = wanted.pop()
        if vocab[piece] not in kept:
            kept.add(vocab[piece])
            wanted += parts.get(piece, [])
    kept |= {token["id"] for token in tokenizer_json["added_tokens"]}
    return sorted(kept)


def _pair(merge: str | list[str]) -> list[str]:
    """A merge as its two parts (tokenizers writes ``"a b"`` or, since 0.20, ``["a", "b"]``)."""
    return merge.split(" ") if isinstance(merge, str) else list(merge)


def _tokenizer(tokenizer_json: dict, new_id: dict[int, int]) -> dict:
    """The same tokenizer on the kept ids: merges whose parts or result were dropped go, so a word the texts never
    used is spelled with smaller kept pieces (decoding is unchanged)."""
    model = tokenizer_json["model"]
    vocab = {token: new_id[i] for token, i in model["vocab"].items() if i in new_id}
    merges = [m for m in model["merges"] if all(p in vocab for p in _pair(m)) and "".join(_pair(m)) in vocab]
    added = [{**token, "id": new_id[token["id"]]} for token in tokenizer_json["added_tokens"]]
    processor = copy.deepcopy(tokenizer_json.get("post_processor"))
    for special in (processor or {}).get("special_tokens", {}).values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    return {**tokenizer_json, "added_tokens": added, "post_processor": processor,
            "model": {**model, "vocab": vocab, "merges": merges}}


def _config(config: dict, new_id: dict[int, int], original_size: int) -> dict:
    remapped = {key: [new_id[i] for i in config.get(key, []) if i in new_id] for key in ID_LISTS if key in config}
    return {**config, **remapped, TRIMMED_FROM: original_size}


def trim(source: Path, out_dir: Path, kept: list[int], root: Path | None = None) -> Path:
    """Write ``source`` (a CTranslate2 Whisper folder) to ``out_dir`` with only the ``kept`` token ids."""
    model = read_model_bin(source / "model.bin")
    rows = model.get(VOCAB_ROWS[0]).shape[0]
    tokenizer_json = load_tokenizer_json(source / "tokenizer.json")
    if kept[-1] >= rows or kept != sorted(set(kept)):
        raise AssetError(f"kept ids must be sorted, distinct and below the vocabulary size {rows}")
    index = np.asarray(kept)
    for name in VOCAB_ROWS:
        if name in model.variables:
            model.variables[name] = model.variables[name][index]
    new_id = {old: new for new, old in enumerate(kept)}
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    original_size = config.get(TRIMMED_FROM, rows)
    tokenizer = _tokenizer(tokenizer_json, new_id)
    config = _config(config, new_id, original_size)

    staging = partial_dir(out_dir, root)
    staging.mkdir(parents=True)
    write_model_bin(model, staging / "model.bin")
    _write_vocabulary(source, staging, kept)
    _write_json(staging / "tokenizer.json", tokenizer)
    _write_json(staging / "config.json", config)
    _write_json(staging / VOCABULARY_FILE, {"original_size": original_size, "original_ids": _original(source, kept)})
    generation = generation_config(tokenizer, config, max_length=448)
    generation.save_pretrained(staging)
    for path in source.iterdir():
        if path.is_file() and path.name in COPIED:
            (staging / path.name).write_bytes(path.read_bytes())
    return publish(staging, out_dir, root)


def _write_vocabulary(source: Path, staging: Path, kept: list[int]) -> None:
    """CTranslate2's token list, in the file form the source has (``vocabulary.json``, or one token a line)."""
    if (source / "vocabulary.json").is_file():
        tokens = json.loads((source / "vocabulary.json").read_text(encoding="utf-8"))
        _write_json(staging / "vocabulary.json", [tokens[i] for i in kept])
        return
    tokens = (source / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    (staging / "vocabulary.txt").write_text("\n".join(tokens[i] for i in kept) + "\n", encoding="utf-8")


def _original(source: Path, kept: list[int]) -> list[int]:
    """The kept ids in the untrimmed model's numbering (a trimmed source's ids are already renumbered)."""
    record = source / VOCABULARY_FILE
    if not record.is_file():
        return kept
    before = json.loads(record.read_text(encoding="utf-8"))["original_ids"]
    return [before[i] for i in kept]


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=None), encoding="utf-8")
