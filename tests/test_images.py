"""The container images built with podman and run for real (opt-in: ``make images`` / ``pytest -m images``).

See ``loadtest/images.py``: the serving image on the store ``make demo`` wrote (readiness, a transcription
by student and teacher, a bad upload, its HEALTHCHECK, Prometheus answering every dashboard query) and
the training image's compose command on configs/tiny.yaml. Minutes, and podman; the report is in
``runs/images/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loadtest.images import verify
from tests.conftest import REPO

pytestmark = [pytest.mark.images, pytest.mark.slow]


def test_the_images_build_serve_and_train():
    store = Path(os.environ.get("K2D_MODELS_DIR", REPO / "models"))
    assert verify(store, REPO / "runs/images") == []
