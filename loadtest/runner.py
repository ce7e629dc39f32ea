"""The load generator: HTTP only (httpx), bounded in requests and time, loopback unless allowed.

For each concurrency level, the models take turns in short rounds (student, teacher, teacher,
student, ...): each round keeps ``concurrency`` requests in flight against one model until its
share of requests is done. Each model is therefore measured alone at that level, and slow drift
of the machine hits both alike. Warm-up requests are sent first and excluded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx


class UnsafeTargetError(ValueError):
    """A target outside the loopback range without ``--allow-remote``."""


@dataclass
class Clip:
    name: str
    data: bytes
    seconds: float
    reference: str | None = None  # the manifest's text: MER through the server, as users get it


@dataclass
class Sample:
    model: str
    concurrency: int
    status: int
    latency_s: float
    audio_s: float
    round: int
    clip: str = ""
    text: str | None = None
    reference: str | None = None


def check_target(url: str, allow_remote: bool) -> None:
    host = urlparse(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as err:
        raise UnsafeTargetError(f"cannot resolve {host!r}") from err
    if not allow_remote and not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise UnsafeTargetError(f"{host} is not a loopback address; pass --allow-remote to load-test another host")


def load_clips(manifest: Path) -> list[Clip]:
    """The audio set from a k2d manifest; durations come from the rows or from the server's answers."""
    clips = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            path = manifest.parent / row["audio"]
            clips.append(Clip(row["audio"], path.read_bytes(), float(row.get("duration", 0.0)), row.get("text")))
    return clips


async def _one(client: httpx.AsyncClient, url: str, model: str, clip: Clip, language: str | None,
               concurrency: int, round_index: int) -> Sample:
    data = {"model": model, "response_format": "json"}
    if language:
        data["language"] = language
    start = time.perf_counter()
    text = None
    try:
        response = await client.post(url + "/transcribe", files={"file": (clip.name, clip.data)}, data=data)
        status = response.status_code
        body = response.json() if status == 200 else {}
        audio_s, text = body.get("duration", clip.seconds), body.get("text")
    except httpx.HTTPError:
        status, audio_s = 0, clip.seconds
    return Sample(model, concurrency, status, time.perf_counter() - start, audio_s, round_index, clip.name, text,
                  clip.reference)


async def _round(client, url: str, model: str, clips: list[Clip], count: int, offset: int, concurrency: int,
                 language: str | None, round_index: int) -> tuple[list[Sample], float]:
    gate = asyncio.Semaphore(concurrency)

    async def bounded(i: int) -> Sample:
        async with gate:
            return await _one(client, url, model, clips[(offset + i) % len(clips)], language, concurrency, round_index)

    start = time.perf_counter()
    samples = await asyncio.gather(*(bounded(i) for i in range(count)))
    return list(samples), time.perf_counter() - start


async def run_sweep(url: str, models: list[str], clips: list[Clip], levels: list[int], requests: int, rounds: int,
                    warmup: int, language: str | None, timeout_s: float, deadline_s: float, progress=None) -> dict:
    """All samples plus each (model, level)'s busy wall time, for throughput."""
    samples: list[Sample] = []
    wall: dict[tuple[str, int], float] = {}
    started = time.monotonic()
    limits = httpx.Limits(max_connections=max(levels) + 4)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        for model in models:
            for i in range(warmup):
                await _one(client, url, model, clips[i % len(clips)], language, 1, -1)
        for level in levels:
            per_round = max(level, requests // rounds)
            for round_index in range(rounds):
                order = models if round_index % 2 == 0 else list(reversed(models))
                for model in order:
                    if time.monotonic() - started > deadline_s:
                        return {"samples": samples, "wall": wall, "stopped_early": True}
                    got, seconds = await _round(client, url, model, clips, per_round, round_index * per_round, level,
                                                language, round_index)
                    samples += got
                    wall[(model, level)] = wall.get((model, level), 0.0) + seconds
                    if progress:
                        progress(len(got))
    return {"samples": samples, "wall": wall, "stopped_early": False}
