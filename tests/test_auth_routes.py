"""With ``K2D_API_KEY`` set, every route of the real route table needs the key but the probes (and the
race page's static files); WebSocket refusals close with the documented codes (1008, 1013), seen by a real
WebSocket client. No model is loaded: the app is not started (TestClient outside ``with``) or served
with its lifespan off — auth runs before any model would.
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from fastapi.routing import APIWebSocketRoute, iter_route_contexts
from fastapi.testclient import TestClient
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from app.main import create_app
from app.settings import Settings
from tests.conftest import free_port

KEY = "sesame"
AUTH = {"Authorization": f"Bearer {KEY}"}
WRONG = [{}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}, {"Authorization": "Basic c2VzYW1l"}]
PROBES = {"/healthz", "/readyz"}
WS_PATH = "/v1/realtime/transcription"


def app_with(tmp_path, monkeypatch, ui: bool = False, **settings):
    monkeypatch.setenv("K2D_UI", "true" if ui else "false")
    return create_app(Settings(models_dir=tmp_path, api_key=KEY, **settings))


def http_routes(app) -> list[tuple[str, str]]:
    """(method, concrete path) of every HTTP route the app has (included routers flattened, with their
    prefixes), FastAPI's own docs pages included."""
    found = []
    for context in iter_route_contexts(app.routes):
        if context.methods:
            path = re.sub(r"\{[^}]+\}", "x", context.path)
            found += [(method, path) for method in sorted(context.methods - {"HEAD"})]
    return found


def test_every_route_but_the_probes_needs_the_key(tmp_path, monkeypatch):
    app = app_with(tmp_path, monkeypatch)
    routes = http_routes(app)
    paths = {path for _, path in routes}
    assert {"/metrics", "/docs", "/redoc", "/openapi.json", "/transcribe", "/v1/models"} <= paths  # the real table
    client = TestClient(app)
    for method, path in routes:
        if path in PROBES:
            assert client.request(method, path).status_code != 401, path
            continue
        for headers in WRONG:
            refused = client.request(method, path, headers=headers)
            assert refused.status_code == 401, (method, path, headers, refused.status_code)
            assert refused.json()["error"]["type"] == "unauthorized" and refused.headers["WWW-Authenticate"] == "Bearer"
        allowed = client.request(method, path, headers=AUTH)
        assert allowed.status_code not in (401, 403) and allowed.status_code < 500, (method, path, allowed.text)
    assert client.get("/no/such/route").status_code == 401  # no 404 that would map the routes for a stranger
    assert client.get("/no/such/route", headers=AUTH).status_code == 404
    assert [c.path for c in iter_route_contexts(app.routes) if isinstance(c.route, APIWebSocketRoute)] == [WS_PATH]


def test_the_race_page_is_the_only_other_thing_served_without_the_key(tmp_path, monkeypatch):
    from app.routers.ui import PUBLIC_PREFIX, is_public

    app = app_with(tmp_path, monkeypatch, ui=True)
    client = TestClient(app)
    for method, path in http_routes(app):
        status = client.request(method, path).status_code
        page = is_public(path) or path.startswith(PUBLIC_PREFIX)
        assert (status != 401) == (path in PROBES or page), (method, path, status)


def test_metrics_can_opt_out_and_nothing_else_opens_with_it(tmp_path, monkeypatch):
    client = TestClient(app_with(tmp_path, monkeypatch, metrics_public=True))
    assert client.get("/metrics").status_code == 200
    for path in ("/docs", "/redoc", "/openapi.json", "/v1/models"):
        assert client.get(path).status_code == 401, path


def test_the_documentation_can_opt_out_and_nothing_else_opens_with_it(tmp_path, monkeypatch):
    client = TestClient(app_with(tmp_path, monkeypatch, docs_public=True))
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    for path in ("/metrics", "/v1/models", "/transcribe", "/docs-not-really"):
        assert client.get(path).status_code == 401, path


def test_without_a_key_nothing_asks_for_one(tmp_path, monkeypatch):
    monkeypatch.setenv("K2D_UI", "false")
    client = TestClient(create_app(Settings(models_dir=tmp_path)))
    for path in ("/metrics", "/docs", "/openapi.json", "/v1/models", "/healthz"):
        assert client.get(path).status_code == 200, path


@contextmanager
def served(app):
    """A real uvicorn on a loopback port, lifespan off (no model is loaded)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def close_of(address: str, headers: dict | None = None) -> tuple[int, str]:
    """The close code and reason a real WebSocket client gets (never a refused handshake)."""
    try:
        with connect(f"ws://{address}{WS_PATH}", additional_headers=headers or {}, open_timeout=10) as ws:
            ws.recv(timeout=10)
    except InvalidStatus as err:
        pytest.fail(f"the handshake was refused with HTTP {err.response.status_code}, not closed with a code")
    except ConnectionClosed as err:
        return err.rcvd.code, err.rcvd.reason
    pytest.fail("the socket stayed open")


def test_websocket_refusals_close_with_the_documented_codes(tmp_path, monkeypatch):
    app = app_with(tmp_path, monkeypatch, max_streams=2)
    with served(app) as address:
        for headers in WRONG:
            assert close_of(address, headers) == (1008, "missing or wrong API key"), headers
        code, reason = close_of(address, AUTH)  # the key is right; no streaming model is served
        assert code == 1008 and reason.startswith("no streaming model")
        app.state.streams = 2  # K2D_MAX_STREAMS streams running
        assert close_of(address, AUTH) == (1013, "2 streams already running")
        assert close_of(address) == (1008, "missing or wrong API key")  # the key is checked first
        app.state.streams = 0
        assert httpx.get(f"http://{address}/healthz").status_code == 200
