"""SIGTERM while a request is in flight: the request still completes, then the process exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np

from k2d.audio import decode_audio, write_audio
from tests.conftest import DATA, REPO, free_port


def test_sigterm_drains_in_flight_requests(served_store, tmp_path):
    port = free_port()
    env = {**os.environ, "K2D_MODELS_DIR": str(served_store.store), "K2D_MODELS": json.dumps(["whisper-base"]),
           "K2D_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-m", "k2d_cli", "serve"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        speech = np.tile(decode_audio(DATA / "zh_lecture.flac"), 6)  # ~35 s: two windows, a few seconds of work
        audio = write_audio(tmp_path / "long.flac", speech).read_bytes()
        result: dict = {}

        def request():
            result["response"] = httpx.post(url + "/transcribe", files={"file": ("long.flac", audio)},
                                            data={"language": "zh", "vad": "false"}, timeout=120)
            result["done"] = time.monotonic()

        worker = threading.Thread(target=request)
        worker.start()
        time.sleep(0.5)  # the request is uploaded and being transcribed
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        worker.join(timeout=120)
        assert result["done"] > signalled  # it really was in flight when SIGTERM arrived
        assert result["response"].status_code == 200 and "模型" in result["response"].json()["text"]
        # uvicorn finishes its graceful shutdown, then re-raises the captured SIGTERM
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
        log = server.stdout.read()
        assert "Waiting for application shutdown" in log and "Application shutdown complete" in log, log
    finally:
        if server.poll() is None:
            server.kill()
