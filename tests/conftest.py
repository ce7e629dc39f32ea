"""Shared fixtures: the real model store (fetched by `make models`), the real test clips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from k2d.manifest import read_manifest  # noqa: E402
from k2d.registry import Registry  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
MANIFEST = DATA / "manifest.jsonl"
REQUIRED = ("whisper-base", "whisper-base-hf", "whisper-tiny.en", "whisper-tiny.en-hf")


@pytest.fixture(scope="session")
def registry() -> Registry:
    store = Path(os.environ.get("K2D_MODELS_DIR", REPO / "models"))
    registry = Registry(store)
    missing = [name for name in REQUIRED if name not in registry or not registry.path_of(name).is_dir()]
    if missing:
        pytest.fail(f"models missing from {store}: {missing}; run `make models` (k2d models fetch)")
    return registry


@pytest.fixture(scope="session")
def manifest_rows():
    return list(read_manifest(MANIFEST))
