"""The model.bin reader: round trip, and clear errors for truncated or foreign files."""

from __future__ import annotations

import numpy as np
import pytest

from k2d_train.store.ct2_format import CT2Model, ModelBinError, read_model_bin, write_model_bin


def small_model() -> CT2Model:
    rng = np.random.default_rng(0)
    return CT2Model(
        spec_name="WhisperSpec",
        revision=3,
        variables={
            "decoder/embeddings/weight": rng.standard_normal((7, 4)).astype(np.float16),
            "decoder/num_heads": np.array(2, dtype=np.int16),
            "encoder/conv1/bias": rng.standard_normal(4).astype(np.float32),
            "flags": np.array([1, -2, 3], dtype=np.int8),
        },
        aliases={"decoder/projection/weight": "decoder/embeddings/weight"},
    )


def test_round_trip_keeps_names_dtypes_values_and_aliases(tmp_path):
    path = tmp_path / "model.bin"
    write_model_bin(small_model(), path)
    back = read_model_bin(path)
    assert back.spec_name == "WhisperSpec" and back.revision == 3
    for name, array in small_model().variables.items():
        assert back.variables[name].dtype == array.dtype
        np.testing.assert_array_equal(back.variables[name], array)
    np.testing.assert_array_equal(back.get("decoder/projection/weight"), back.get("decoder/embeddings/weight"))
    assert back.scalar("decoder/num_heads") == 2


@pytest.mark.parametrize("cut", [3, 20, 60, -5])
def test_truncated_file_is_rejected_with_a_clear_message(tmp_path, cut):
    path = tmp_path / "model.bin"
    write_model_bin(small_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(ModelBinError, match="truncated"):
        read_model_bin(path)


@pytest.mark.parametrize("payload", [b"PK\x03\x04 this is a zip, not a model", b"\x00" * 64, b"GGUF\x03\x00\x00\x00"])
def test_foreign_file_is_rejected(tmp_path, payload):
    path = tmp_path / "model.bin"
    path.write_bytes(payload)
    with pytest.raises(ModelBinError):
        read_model_bin(path)


def test_trailing_garbage_is_rejected(tmp_path):
    path = tmp_path / "model.bin"
    write_model_bin(small_model(), path)
    path.write_bytes(path.read_bytes() + b"extra")
    with pytest.raises(ModelBinError, match="trailing"):
        read_model_bin(path)


def test_real_base_model_bin_reads_completely(registry):
    model = read_model_bin(registry.path_of("whisper-base") / "model.bin")
    assert model.spec_name == "WhisperSpec"
    assert model.get("decoder/embeddings/weight").shape == (51865, 512)
    assert model.get("decoder/projection/weight") is model.get("decoder/embeddings/weight")
    assert sum(1 for name in model.variables if name.startswith("encoder/layer_") and name.endswith("linear_0/weight")) == 12
