"""Shared fixtures: the real model store (fetched by `make models`), the real test clips, a real server."""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from k2d.manifest import read_manifest  # noqa: E402
from k2d.registry import ModelEntry, Registry, Serving  # noqa: E402

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(settings):
    """A real uvicorn server in a thread on a loopback port; yields (base URL, app)."""
    import uvicorn

    from app.main import create_app

    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{settings.port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture(scope="session")
def served_store(registry, tmp_path_factory) -> Registry:
    """Whisper base as the teacher and tiny.en in the student's seat: a real, smaller Whisper standing
    in for a distilled student, which CI does not train to convergence."""
    scratch = Registry(tmp_path_factory.mktemp("served"))
    base, tiny = registry.get("whisper-base"), registry.get("whisper-tiny.en")
    scratch.add(ModelEntry(**{**base.__dict__, "path": str(registry.path_of("whisper-base"))}))
    scratch.add(ModelEntry(**{**tiny.__dict__, "path": str(registry.path_of("whisper-tiny.en")), "role": "student",
                              "serving": Serving(teacher="whisper-base", default_language="en")}))
    return scratch


STORE_FIXTURES = {"registry", "served_store"}  # the real model store: only the integration tier reads it


def pytest_collection_modifyitems(config, items):
    """The fast tier (``-m 'not slow'``) needs no model store: a test that reaches it through a fixture is
    part of the integration tier, whether or not its author remembered to say so."""
    for item in items:
        if STORE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
