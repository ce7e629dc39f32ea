"""The two conversions between model forms: CTranslate2 → transformers, transformers → CTranslate2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from k2d.context import POLICY_FILE
from k2d_train.store.ct2_format import CT2Model, ModelBinError, read_model_bin
from k2d_train.store.ct2_to_hf import build_hf_model, hf_state_dict, whisper_shape
from k2d_train.store.publish import partial_dir, publish
from k2d_train.store.whisper_assets import (
    AssetError,
    check_vocabulary,
    generation_config,
    language_tokens,
    languages,
    load_tokenizer_json,
    special_ids,
    with_timestamp_tokens,
    write_preprocessor_config,
)

QUANTIZATIONS = ("int8", "int8_float16", "int8_float32", "int8_bfloat16", "float16", "bfloat16", "float32")
_BYTES_PER_WEIGHT = {q: 1 if q.startswith("int8") else 4 if q == "float32" else 2 for q in QUANTIZATIONS}
# the context policy travels with the weights: the server must give the encoder what it was trained on
COPIED_FILES = ("tokenizer.json", "preprocessor_config.json", "generation_config.json", POLICY_FILE)


def ct2_parameter_count(model: CT2Model) -> int:
    """Count as transformers does: no quantisation scales, no all-zero fused key biases, tied once."""
    return int(sum(a.size for a in hf_state_dict(model).values()))


def prepare_ct2_dir(ct2_dir: Path) -> dict:
    """Check a CTranslate2 Whisper directory and complete it in place for offline use.

    Returns facts for the registry. Raises :class:`ModelBinError`/:class:`AssetError` with a
    one-line reason for a truncated or foreign ``model.bin`` or a missing tokenizer.
    """
    model = read_model_bin(ct2_dir / "model.bin")
    shape = whisper_shape(model)
    original = load_tokenizer_json(ct2_dir / "tokenizer.json")
    tokenizer = with_timestamp_tokens(original)
    check_vocabulary(tokenizer, shape["vocab_size"])
    if tokenizer is not original:
        (ct2_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    if not (ct2_dir / "preprocessor_config.json").exists():
        write_preprocessor_config(ct2_dir, shape["num_mel_bins"])
    config = _ct2_config(ct2_dir)
    quantization = _dominant_dtype(model)
    return {
        "parameters": ct2_parameter_count(model),
        "languages": languages(language_tokens(tokenizer, config)),
        "quantization": quantization,
        "extra": {"shape": shape},
    }


def _ct2_config(ct2_dir: Path) -> dict:
    path = ct2_dir / "config.json"
    if not path.exists():
        raise AssetError(f"{ct2_dir}: missing config.json (CTranslate2 Whisper config)")
    return json.loads(path.read_text(encoding="utf-8"))


def _dominant_dtype(model: CT2Model) -> str:
    names = {np.dtype("f2"): "float16", np.dtype("f4"): "float32", np.dtype("i1"): "int8"}
    weight = model.get("decoder/embeddings/weight")
    return names.get(weight.dtype, str(weight.dtype))


def ct2_to_transformers(ct2_dir: Path, hf_dir: Path, root: Path | None = None) -> int:
    """Import a prepared CTranslate2 directory as a transformers checkpoint; return parameter count.
    ``root``: the store ``hf_dir`` must lie in (nothing outside it is ever replaced)."""
    from transformers import WhisperTokenizer

    model = read_model_bin(ct2_dir / "model.bin")
    tokenizer_json = load_tokenizer_json(ct2_dir / "tokenizer.json")
    ids = special_ids(tokenizer_json)
    hf_model = build_hf_model(model, ids)
    hf_model.generation_config = generation_config(
        tokenizer_json, _ct2_config(ct2_dir), hf_model.config.max_target_positions
    )
    tmp = partial_dir(hf_dir, root)
    hf_model.save_pretrained(tmp)
    WhisperTokenizer(tokenizer_file=str(ct2_dir / "tokenizer.json")).save_pretrained(tmp)
    shutil.copy2(ct2_dir / "tokenizer.json", tmp / "tokenizer.json")
    write_preprocessor_config(tmp, hf_model.config.num_mel_bins)
    publish(tmp, hf_dir, root)
    return sum(p.numel() for p in hf_model.parameters())


def estimated_export_bytes(hf_dir: Path, quantization: str) -> int:
    from transformers import WhisperConfig

    config = WhisperConfig.from_pretrained(hf_dir)
    d, v = config.d_model, config.vocab_size
    per_layer = 12 * d * d  # attention + 4x FFN, a lower bound that is close for Whisper
    weights = v * d + (config.encoder_layers + config.decoder_layers) * per_layer
    return weights * _BYTES_PER_WEIGHT[quantization]


def transformers_to_ct2(hf_dir: Path, out_dir: Path, quantization: str, root: Path | None = None) -> None:
    """Convert with CTranslate2's own converter and copy what faster-whisper needs offline (``root``: the store
    ``out_dir`` must lie in)."""
    import ctranslate2

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    needed = estimated_export_bytes(hf_dir, quantization)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out_dir.parent).free
    if free < needed:
        raise OSError(f"not enough disk space for the export: {needed / 1e6:.0f} MB needed, {free / 1e6:.0f} MB free")
    for name in ("tokenizer.json", "preprocessor_config.json"):
        if not (hf_dir / name).exists():
            raise AssetError(f"{hf_dir}: missing {name}; cannot export a model that faster-whisper loads offline")
    tmp = partial_dir(out_dir, root)
    copy = [name for name in COPIED_FILES if (hf_dir / name).exists()]
    converter = ctranslate2.converters.TransformersConverter(str(hf_dir), copy_files=copy)
    converter.convert(str(tmp), quantization=quantization, force=True)
    publish(tmp, out_dir, root)


__all__ = [
    "QUANTIZATIONS",
    "AssetError",
    "ModelBinError",
    "ct2_to_transformers",
    "prepare_ct2_dir",
    "transformers_to_ct2",
]
