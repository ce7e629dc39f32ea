"""``WS /v1/realtime/transcription``: live transcription with a streaming CTC student.

The client sends audio as it is captured — binary frames of 16 kHz mono PCM16, or OpenAI-style JSON
``{"type": "input_audio_buffer.append", "audio": <base64 PCM16>}`` — and ``input_audio_buffer.commit``
to end an utterance. The server answers with OpenAI's realtime transcription events where they fit:
``transcription_session.created``, then ``conversation.item.input_audio_transcription.delta`` as each
0.64 s chunk is decoded and ``...completed`` with the whole transcript on commit or close. Every
malformed message (not JSON, nested too deep, a wrong type, bad audio) gets an ``error`` event and the
stream goes on; a fault of the server's own closes it with 1011 and a close frame. Bounded work: the
audio is held in a :class:`~k2d.streaming.StreamBuffer` (linear cost, about one window in memory), an
utterance may not exceed ``K2D_MAX_AUDIO_S``, a message 1 MiB (UTF-8 bytes of a text frame), and at
most ``K2D_MAX_STREAMS`` streams run at once. Refusals complete the handshake and close with a
code the client can read (a close before the handshake reaches it only as a bare HTTP 403): 1008 without
the API key (:class:`app.auth.ApiKeyGuard`) or without a streaming model, 1013 (try again later) when
``K2D_MAX_STREAMS`` streams are already running.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from app.auth import POLICY_VIOLATION, TRY_AGAIN_LATER
from k2d.audio import SAMPLE_RATE
from k2d.streaming import StreamDecoder

router = APIRouter()
MAX_MESSAGE_BYTES = 1 << 20
INTERNAL_ERROR = 1011  # RFC 6455: the server met a condition that kept it from serving the stream
log = logging.getLogger("k2d")
_items = itertools.count(1)


class StreamError(ValueError):
    """Bad input on a stream: reported as an ``error`` event; the connection stays usable unless fatal."""


def pcm16(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise StreamError("audio must be 16-bit PCM: an odd number of bytes arrived")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def message_bytes(message: dict) -> int:
    """A message's size on the wire: a text frame's UTF-8 bytes, not its characters (a CJK character is 3)."""
    if message.get("bytes") is not None:
        return len(message["bytes"])
    text = message.get("text") or ""
    return len(text) if len(text) > MAX_MESSAGE_BYTES else len(text.encode("utf-8", errors="surrogatepass"))


def audio_of(message: dict) -> np.ndarray | None:
    """The samples a message carries, or None for a control message; StreamError (never another exception)
    for anything else: not JSON, nested too deep to parse, not an object, a wrong type, undecodable audio."""
    if message.get("bytes") is not None:
        return pcm16(message["bytes"])
    text = message.get("text")
    if not isinstance(text, str):
        raise StreamError("send binary PCM16 frames or JSON text events")
    try:
        event = json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError; RecursionError: [[[[…
        raise StreamError("text messages must be JSON events") from err
    if not isinstance(event, dict):
        raise StreamError("an event is a JSON object with a type")
    kind = event.get("type")
    if kind == "input_audio_buffer.append":
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise StreamError("input_audio_buffer.append needs \"audio\": a base64 string of PCM16")
        try:
            return pcm16(base64.b64decode(audio, validate=True))
        except (binascii.Error, ValueError) as err:
            raise StreamError("input_audio_buffer.append needs base64 PCM16 audio") from err
    if kind == "input_audio_buffer.commit":
        return None
    shown = repr(kind) if isinstance(kind, str | None) else f"of JSON type {type(kind).__name__}"
    raise StreamError(f"unknown event type {shown[:80]}: send input_audio_buffer.append or .commit")


def _event(kind: str, **fields) -> str:
    return json.dumps({"type": kind, **fields}, ensure_ascii=False)


def _error(message: str, code: str = "invalid_request") -> str:
    return _event("error", error={"type": "invalid_request_error", "code": code, "message": message})


@router.websocket("/v1/realtime/transcription")
async def realtime_transcription(websocket: WebSocket, model: str | None = None) -> None:
    state = websocket.app.state  # the API key was checked by app.auth.ApiKeyGuard (close code 1008)
    settings, models = state.settings, state.models
    if state.streams >= settings.max_streams:
        return await _refuse(websocket, TRY_AGAIN_LATER, f"{settings.max_streams} streams already running")
    streaming = [n for n, s in models.models.items() if s.served.engine.capabilities.streaming]
    name = model or (streaming[0] if streaming else None)
    if name not in streaming:
        return await _refuse(websocket, POLICY_VIOLATION, "no streaming model: serve a CTC student trained with "
                             "distill_ctc.streaming (model=NAME to choose)")
    state.streams += 1
    try:
        await websocket.accept()
        await _serve(websocket, models.models[name].served.engine, name, settings.max_audio_s)
    except WebSocketDisconnect:
        pass
    except Exception:  # a fault of ours: the client still gets a close frame, never a dropped connection
        log.exception("realtime stream on %s failed", name)
        with contextlib.suppress(Exception):
            await websocket.close(code=INTERNAL_ERROR, reason="internal error")
    finally:
        state.streams -= 1


async def _refuse(websocket: WebSocket, code: int, reason: str) -> None:
    """Complete the handshake, then close with ``code`` and ``reason`` (what the client can read)."""
    await websocket.accept()
    await websocket.close(code=code, reason=reason[:120])  # a close frame's reason fits in 123 bytes


async def _serve(websocket: WebSocket, engine, name: str, max_audio_s: float) -> None:
    decoder = StreamDecoder(engine)
    item = f"item_{next(_items)}"
    await websocket.send_text(_event("transcription_session.created", model=name, sample_rate=SAMPLE_RATE,
                                     chunk_ms=round(decoder.windows.chunk_s * 1000), audio_format="pcm16"))
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message_bytes(message) > MAX_MESSAGE_BYTES:
            await websocket.send_text(_error(f"a message may carry at most {MAX_MESSAGE_BYTES} bytes", "too_large"))
            continue
        try:
            samples = audio_of(message)
        except StreamError as err:
            await websocket.send_text(_error(str(err)))
            continue
        if samples is None:  # commit: the utterance is over
            transcript = await asyncio.to_thread(decoder.finish)
            await websocket.send_text(_event("conversation.item.input_audio_transcription.completed", item_id=item,
                                             transcript=transcript))
            decoder, item = StreamDecoder(engine), f"item_{next(_items)}"
            continue
        if decoder.seconds + len(samples) / SAMPLE_RATE > max_audio_s:
            await websocket.send_text(_error(f"an utterance may last at most {max_audio_s:g} s: commit it first",
                                             "audio_too_long"))
            continue
        delta = await asyncio.to_thread(decoder.feed, samples)
        if delta:
            await websocket.send_text(_event("conversation.item.input_audio_transcription.delta", item_id=item,
                                             delta=delta))
