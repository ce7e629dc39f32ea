"""Random-weight CTranslate2 Whisper models of any shape, for speed measurements only.

No large Whisper is available offline, but speed depends on shape, not on weights: a large-v2
shaped teacher (32+32 layers, d=1280) and its K²D student (32+2) written with random float16
weights time exactly like the real ones. Never use these for accuracy. The layout mirrors the real
base model's ``model.bin`` (same variable names and scalars), with tokenizer and configs copied.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from k2d_train.store.ct2_format import CT2Model, read_model_bin, write_model_bin
from k2d_train.store.publish import partial_dir, publish


@dataclass(frozen=True)
class Shape:
    name: str
    d_model: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    ffn: int


SHAPES = {
    "large-v2": Shape("large-v2", 1280, 20, 32, 32, 5120),
    "medium": Shape("medium", 1024, 16, 24, 24, 4096),
    "small": Shape("small", 768, 12, 12, 12, 3072),
}


def _layer(prefix: str, d: int, ffn: int, cross: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    def norm(name):
        return {f"{prefix}/{name}/gamma": np.ones(d, np.float16), f"{prefix}/{name}/beta": np.zeros(d, np.float16)}

    out = {
        **norm("self_attention/layer_norm"),
        f"{prefix}/self_attention/linear_0/weight": w(3 * d, d), f"{prefix}/self_attention/linear_0/bias": w(3 * d),
        f"{prefix}/self_attention/linear_1/weight": w(d, d), f"{prefix}/self_attention/linear_1/bias": w(d),
        **norm("ffn/layer_norm"),
        f"{prefix}/ffn/linear_0/weight": w(ffn, d), f"{prefix}/ffn/linear_0/bias": w(ffn),
        f"{prefix}/ffn/linear_1/weight": w(d, ffn), f"{prefix}/ffn/linear_1/bias": w(d),
    }
    if cross:
        out.update({
            **norm("attention/layer_norm"),
            f"{prefix}/attention/linear_0/weight": w(d, d), f"{prefix}/attention/linear_0/bias": w(d),
            f"{prefix}/attention/linear_1/weight": w(2 * d, d), f"{prefix}/attention/linear_1/bias": w(2 * d),
            f"{prefix}/attention/linear_2/weight": w(d, d), f"{prefix}/attention/linear_2/bias": w(d),
        })
    return out


def write_random_model(template_dir: Path, out: Path, shape: Shape, decoder_layers: int, seed: int = 0) -> Path:
    """A CTranslate2 directory of ``shape`` with ``decoder_layers`` decoder layers and random weights."""
    if (out / "model.bin").exists():
        return out
    template = read_model_bin(template_dir / "model.bin")
    rng = np.random.default_rng(seed)
    d, vocab = shape.d_model, template.get("decoder/embeddings/weight").shape[0]
    mels = template.get("encoder/conv1/weight").shape[1]
    variables = {name: array for name, array in template.variables.items() if array.ndim == 0}
    variables["encoder/num_heads"] = np.array(shape.heads, dtype=template.variables["encoder/num_heads"].dtype)
    variables["decoder/num_heads"] = np.array(shape.heads, dtype=template.variables["decoder/num_heads"].dtype)
    variables.update({
        "encoder/conv1/weight": (rng.standard_normal((d, mels, 3), dtype=np.float32) * 0.02).astype(np.float16),
        "encoder/conv1/bias": np.zeros(d, np.float16),
        "encoder/conv2/weight": (rng.standard_normal((d, d, 3), dtype=np.float32) * 0.02).astype(np.float16),
        "encoder/conv2/bias": np.zeros(d, np.float16),
        "encoder/position_encodings/encodings": np.zeros((1500, d), np.float16),
        "encoder/layer_norm/gamma": np.ones(d, np.float16), "encoder/layer_norm/beta": np.zeros(d, np.float16),
        "decoder/embeddings/weight": (rng.standard_normal((vocab, d), dtype=np.float32) * 0.02).astype(np.float16),
        "decoder/position_encodings/encodings": np.zeros((448, d), np.float16),
        "decoder/layer_norm/gamma": np.ones(d, np.float16), "decoder/layer_norm/beta": np.zeros(d, np.float16),
    })
    for i in range(shape.encoder_layers):
        variables.update(_layer(f"encoder/layer_{i}", d, shape.ffn, False, rng))
    for i in range(decoder_layers):
        variables.update(_layer(f"decoder/layer_{i}", d, shape.ffn, True, rng))
    staging = partial_dir(out)
    staging.mkdir()
    write_model_bin(CT2Model(template.spec_name, template.revision, variables, dict(template.aliases)),
                    staging / "model.bin")
    for name in ("tokenizer.json", "preprocessor_config.json", "vocabulary.txt", "vocabulary.json"):
        if (template_dir / name).exists():
            shutil.copy2(template_dir / name, staging / name)
    config = json.loads((template_dir / "config.json").read_text())
    config["alignment_heads"] = [[decoder_layers - 1, h] for h in range(shape.heads)]
    (staging / "config.json").write_text(json.dumps(config))
    return publish(staging, out)
