"""The transformers import of the CTranslate2 weights is the same model, and exports back exactly."""

from __future__ import annotations

import ctranslate2
import numpy as np
import pytest
import torch
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from transformers import WhisperForConditionalGeneration

from k2d.audio import decode_audio
from k2d_train.store.convert import transformers_to_ct2
from k2d_train.store.ct2_format import read_model_bin
from tests.conftest import MANIFEST

MAX_NEW_TOKENS = 80


def prompt_for(name: str, language: str | None) -> list[int]:
    """Pure greedy needs <|notimestamps|>: without it CTranslate2 applies Whisper's timestamp rules."""
    if name == "whisper-tiny.en":
        return [50257, 50362]
    return [50258, {"en": 50259, "zh": 50260}[language or "en"], 50359, 50363]


def hf_greedy(model, features: np.ndarray, prompt: list[int], eot: int) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        encoded = model.model.encoder(torch.from_numpy(features[None]))
        ids, past = torch.tensor([prompt]), None
        for _ in range(MAX_NEW_TOKENS):
            step = model(encoder_outputs=encoded, decoder_input_ids=ids if past is None else ids[:, -1:],
                         past_key_values=past, use_cache=True)
            past, token = step.past_key_values, int(step.logits[0, -1].argmax())
            if token == eot:
                break
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def ct2_greedy(whisper: WhisperModel, features: np.ndarray, prompt: list[int]) -> list[int]:
    result = whisper.model.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])), [prompt],
        beam_size=1, max_length=448, suppress_blank=False, suppress_tokens=[],
    )
    return result[0].sequences_ids[0][:MAX_NEW_TOKENS]


@pytest.mark.parametrize("name", ["whisper-base", "whisper-tiny.en"])
def test_transformers_import_is_token_identical_to_faster_whisper(registry, manifest_rows, name):
    whisper = WhisperModel(str(registry.path_of(name)), device="cpu", compute_type="float32")
    hf_model = WhisperForConditionalGeneration.from_pretrained(registry.path_of(f"{name}-hf")).eval()
    eot = hf_model.generation_config.eos_token_id
    compared = 0
    for row in manifest_rows:
        features = pad_or_trim(whisper.feature_extractor(decode_audio(row.path(MANIFEST))))
        prompt = prompt_for(name, row.extra.get("language"))
        expected = ct2_greedy(whisper, features, prompt)
        assert hf_greedy(hf_model, features, prompt, eot) == expected, row.audio
        compared += len(expected)
    assert compared > 40  # the clips really produced text to compare


def test_export_to_float32_reproduces_the_original_weights_exactly(registry, tmp_path):
    out = tmp_path / "base-f32"
    transformers_to_ct2(registry.path_of("whisper-base-hf"), out, "float32")
    original = read_model_bin(registry.path_of("whisper-base") / "model.bin")
    exported = read_model_bin(out / "model.bin")
    weights = {name for name, array in original.variables.items() if array.ndim >= 1}
    assert weights == {name for name, array in exported.variables.items() if array.ndim >= 1}
    for name in weights:
        np.testing.assert_array_equal(exported.get(name), original.get(name).astype(np.float32), err_msg=name)
    for copied in ("tokenizer.json", "preprocessor_config.json", "generation_config.json"):
        assert (out / copied).is_file()
