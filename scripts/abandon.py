"""Abandoned requests: how soon the server is idle once its clients have left (a benchmark, not a test).

    python scripts/abandon.py [--clients 10] [--seconds 60] [--leave-after 1] [--alone] [--out runs/abandon.json]

Serves whisper-tiny.en in a student's seat with whisper-base as its teacher behind it (as the tests
do; ``--alone``: tiny.en only) on a free 127.0.0.1 port, warms it with one request, then lets
``--clients`` clients each upload ``--seconds`` of speech (en_lecture.flac repeated, ``vad=false`` so
every 30 s is a window) and leave ``--leave-after`` seconds after their upload. From the moment the
last client left it reports when the server process stops using CPU (< 5 % of a core over 0.25 s:
no decode, no ``generate`` call left), what its metrics say then (requests in flight, queued windows,
499s) and how many of the uploaded audio seconds were transcribed anyway. Repeats ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families
from soak import REPO, start_server, stop_server

from k2d.audio import decode_audio, write_audio
from k2d.registry import ModelEntry, Registry

IDLE_CPU_S = 0.0125  # CPU seconds per 0.25 s sample: 5 % of one core


def scratch_store(models_dir: Path, folder: Path) -> Path:
    """A registry with tiny.en in the student's seat and base as its teacher (the tests' served pair)."""
    source, scratch = Registry(models_dir), Registry(folder)
    base, tiny = source.get("whisper-base"), source.get("whisper-tiny.en")
    scratch.add(ModelEntry(**{**base.__dict__, "path": str(source.path_of("whisper-base"))}))
    scratch.add(ModelEntry(**{**tiny.__dict__, "path": str(source.path_of("whisper-tiny.en")), "role": "student",
                              "extra": {"teacher": "whisper-base", "default_language": "en"}}))
    return folder


def speech_wav(seconds: float) -> bytes:
    clip = decode_audio(REPO / "tests" / "data" / "en_lecture.flac")
    audio = np.tile(clip, int(seconds * 16000 / len(clip)) + 1)[: int(seconds * 16000)]
    with tempfile.TemporaryDirectory() as tmp:
        return write_audio(Path(tmp) / "speech.wav", audio).read_bytes()


def metrics(url: str) -> dict[str, float]:
    """Totals over every label of the few series this benchmark reads."""
    wanted = {"k2d_in_flight_requests", "k2d_queue_depth", "k2d_audio_seconds_total"}
    totals = dict.fromkeys(wanted, 0.0)
    totals["k2d_requests_total_499"] = 0.0
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name in wanted:
                totals[sample.name] += sample.value
            elif sample.name == "k2d_requests_total" and sample.labels.get("status") == "499":
                totals["k2d_requests_total_499"] += sample.value
    return totals


def seconds_to_idle(pid: int, since: float, timeout: float = 120) -> float:
    """Seconds from ``since`` until the process used < 5 % of a core over a 0.25 s sample (its start)."""
    process = psutil.Process(pid)
    while time.monotonic() - since < timeout:
        start, before = time.monotonic(), sum(process.cpu_times()[:2])
        time.sleep(0.25)
        if sum(process.cpu_times()[:2]) - before < IDLE_CPU_S:
            return max(0.0, start - since)
    return timeout


def abandon_round(url: str, pid: int, audio: bytes, args: argparse.Namespace) -> dict:
    before = metrics(url)
    left: list[float] = []
    answered: list[int] = []

    def client() -> None:
        timeout = httpx.Timeout(30.0, read=args.leave_after)  # the read timer starts once the upload is sent
        try:
            response = httpx.post(url + "/transcribe", files={"file": ("speech.wav", io.BytesIO(audio))},
                                  data={"vad": "false"}, timeout=timeout)
            answered.append(response.status_code)
        except httpx.TimeoutException:
            pass
        left.append(time.monotonic())

    clients = [threading.Thread(target=client) for _ in range(args.clients)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    last_left = max(left)
    idle_s = seconds_to_idle(pid, last_left)
    deadline = time.monotonic() + 10  # the 499s are counted when each request's task has ended
    while (after := metrics(url))["k2d_requests_total_499"] < before["k2d_requests_total_499"] + args.clients \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    uploaded = args.clients * args.seconds
    return {"idle_after_last_client_left_s": round(idle_s, 2), "answered_before_leaving": answered,
            "abandoned_499": after["k2d_requests_total_499"] - before["k2d_requests_total_499"],
            "in_flight_then": after["k2d_in_flight_requests"], "queued_windows_then": after["k2d_queue_depth"],
            "audio_s_transcribed": round(after["k2d_audio_seconds_total"] - before["k2d_audio_seconds_total"], 1),
            "audio_s_uploaded": uploaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per upload")
    parser.add_argument("--leave-after", type=float, default=1.0, help="seconds after the upload a client leaves")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--alone", action="store_true", help="serve tiny.en without a teacher behind it")
    parser.add_argument("--setting", action="append", default=[], metavar="K2D_NAME=VALUE",
                        help="extra server settings, e.g. K2D_MAX_BATCH_S=0 (repeatable)")
    parser.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = parser.parse_args()
    audio = speech_wav(args.seconds)
    with tempfile.TemporaryDirectory(prefix="k2d-abandon-") as tmp:
        store = scratch_store(Path(os.environ.get("K2D_MODELS_DIR", REPO / "models")), Path(tmp))
        env = {"K2D_MODELS_DIR": str(store), "K2D_CPU_THREADS": "2",
               **({"K2D_MODELS": json.dumps(["whisper-tiny.en"])} if args.alone else {}),
               **dict(item.split("=", 1) for item in args.setting)}
        server, url, log_path = start_server(env)
        try:
            warm = httpx.post(url + "/transcribe", files={"file": ("speech.wav", io.BytesIO(audio))},
                              data={"vad": "false"}, timeout=300)
            warm.raise_for_status()
            rounds = [abandon_round(url, server.pid, audio, args) for _ in range(args.rounds)]
        finally:
            with contextlib.suppress(Exception):
                stop_server(server)
    idle = [r["idle_after_last_client_left_s"] for r in rounds]
    summary = {"clients": args.clients, "seconds": args.seconds, "leave_after_s": args.leave_after,
               "models": "whisper-tiny.en" if args.alone else "whisper-tiny.en (student seat) + whisper-base",
               "settings": args.setting, "warm_request_ms": round(warm.elapsed.total_seconds() * 1000),
               "idle_s": {"min": min(idle), "max": max(idle), "all": idle}, "rounds": rounds,
               "server_log": log_path}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
