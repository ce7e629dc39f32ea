"""``python -m loadtest.stream``: live streaming latency and accuracy over ``WS /v1/realtime/transcription``.

Each utterance is sent as PCM16 at real-time pace in 160 ms frames, one stream at a time, as a
microphone would; measured: time from the first audio frame to the first non-empty partial transcript,
and the MER of the final transcripts against the manifest's references. Talks to the server only.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from tqdm import tqdm
from websockets.sync.client import ClientConnection, connect

from k2d.audio import SAMPLE_RATE, decode_audio
from k2d.manifest import read_manifest
from k2d.scoring import ErrorCounts, mer_counts

FRAME_S = 0.16
app = typer.Typer(add_completion=False)


def _is_text(event: dict) -> bool:
    return event["type"].endswith(".delta") and bool(event.get("delta", "").strip())


def stream_one(ws: ClientConnection, pcm: bytes) -> tuple[float | None, str]:
    """Send one utterance at real-time pace; (seconds to the first partial text, final transcript)."""
    frame, first = 2 * int(FRAME_S * SAMPLE_RATE), None
    start = time.monotonic()
    for index, begin in enumerate(range(0, len(pcm), frame)):
        ws.send(pcm[begin:begin + frame])
        deadline = start + (index + 1) * FRAME_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = json.loads(ws.recv(timeout=left))
            except TimeoutError:
                break
            if first is None and _is_text(event):
                first = time.monotonic() - start
    ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    while True:
        event = json.loads(ws.recv(timeout=60))
        if first is None and _is_text(event):
            first = time.monotonic() - start
        if event["type"].endswith(".completed"):
            return first, event["transcript"]


def measure(url: str, manifest: Path, limit: int) -> dict:
    firsts, counts, silent = [], ErrorCounts(), 0
    for row in tqdm(list(read_manifest(manifest))[:limit], desc="streams", unit="utt"):
        audio = decode_audio(row.path(manifest))
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        with connect(url, open_timeout=30) as ws:
            json.loads(ws.recv(timeout=30))  # session.created
            first, transcript = stream_one(ws, pcm)
        silent += first is None
        firsts += [] if first is None else [first]
        counts += mer_counts(row.text or "", transcript)
    return {"url": url, "manifest": str(manifest), "utterances": len(firsts) + silent, "frame_s": FRAME_S,
            "first_partial_s_p50": round(statistics.median(firsts), 3) if firsts else None,
            "first_partial_s_max": round(max(firsts), 3) if firsts else None,
            "no_partial": silent, "final_mer": round(counts.rate, 4)}


@app.command()
def main(url: Annotated[str, typer.Option(help="WebSocket URL")] = "ws://127.0.0.1:8000/v1/realtime/transcription",
         manifest: Annotated[Path, typer.Option(help="Audio set (k2d manifest)", exists=True)] = Path(
             "runs/demo/corpus/test_ood.jsonl"),
         limit: Annotated[int, typer.Option(min=1, help="Utterances")] = 16,
         out: Annotated[Path | None, typer.Option(help="Write the summary JSON here")] = None) -> None:
    summary = measure(url, manifest, limit)
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text)


if __name__ == "__main__":
    app()
