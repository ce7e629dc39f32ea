"""Uploads are untrusted bytes: only the documented audio containers may read them, and FFmpeg's
demuxers that are programs (ffconcat and HLS playlists, SDP sessions, image sequences) are refused
with 415 before they open a file or a socket — whatever name the upload carries.

The upload functions (``app.upload.probe`` / ``decode_upload``, what both transcription endpoints
call) need no model; one slow test sends the same bytes through a real server. Times are printed
(``-s``), never asserted.
"""

from __future__ import annotations

import io
import threading
import time

import av
import httpx
import numpy as np
import psutil
import pytest

from app.settings import Settings
from app.upload import AudioDecodeError, decode_upload, probe
from k2d.audio import decode_audio
from tests.conftest import DATA, REPO, free_port, running_server

SERVER_FILE = "tests/data/en_lecture.flac"  # relative to the server's working directory, as an attacker guesses it
SDP = (b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
       b"m=audio 5004 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n")
ATTACKS = {
    "ffconcat": f"ffconcat version 1.0\nfile {SERVER_FILE}\n".encode(),
    "ffconcat-absolute": f"ffconcat version 1.0\nfile {DATA / 'en_lecture.flac'}\n".encode(),
    "ffconcat-missing": b"ffconcat version 1.0\nfile tests/data/no-such-file.flac\n",
    "ffconcat-concat-protocol": f"ffconcat version 1.0\nfile 'concat:{SERVER_FILE}|{SERVER_FILE}'\n".encode(),
    "ffconcat-subfile": f"ffconcat version 1.0\nfile 'subfile,,start,0,end,4000,,:{SERVER_FILE}'\n".encode(),
    "hls-m3u8": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{SERVER_FILE}\n#EXT-X-ENDLIST\n".encode(),
    "hls-network": b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/a.aac\n#EXT-X-ENDLIST\n",
    "sdp": SDP,
    "png-image": b"\x89PNG\r\n\x1a\n" + bytes(64),
}


def udp_sockets() -> set[tuple]:
    return {(c.laddr, c.fd) for c in psutil.Process().net_connections(kind="udp")}


def watched(action) -> tuple[object, set[tuple], float]:
    """Run ``action`` while a thread records every UDP socket this process holds; (outcome, sockets, ms)."""
    seen: set[tuple] = set()
    before = udp_sockets()
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.update(udp_sockets() - before)
            done.wait(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    started = time.perf_counter()
    try:
        outcome = action()
    except Exception as err:  # noqa: BLE001 (the outcome is what the test inspects)
        outcome = err
    elapsed = (time.perf_counter() - started) * 1000
    done.set()
    thread.join()
    return outcome, seen | (udp_sockets() - before), elapsed


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("step", ["probe", "decode"])
def test_a_playlist_session_or_image_upload_is_refused_before_it_opens_anything(name, step):
    data = ATTACKS[name]
    call = (lambda: probe(io.BytesIO(data), 600)) if step == "probe" else (lambda: decode_upload(io.BytesIO(data), 600))
    outcome, sockets, ms = watched(call)
    print(f"{name} {step}: {type(outcome).__name__} in {ms:.2f} ms")
    assert isinstance(outcome, AudioDecodeError), f"{name} was not refused: {outcome!r}"
    assert "not a supported audio file" in str(outcome)
    assert not sockets, f"{name} opened UDP sockets {sockets}"


def test_the_refusal_tells_nothing_about_the_files_a_playlist_names():
    messages = set()
    for name in ("ffconcat", "ffconcat-absolute", "ffconcat-missing"):
        with pytest.raises(AudioDecodeError) as err:
            decode_upload(io.BytesIO(ATTACKS[name]), 600)
        messages.add(str(err.value))
    assert len(messages) == 1
    assert "en_lecture" not in messages.pop()


def test_trusted_local_decoding_still_reads_any_demuxer(tmp_path):
    """Training and evaluation read their own files unrestricted: the one implementation, two modes."""
    (tmp_path / "clip.flac").write_bytes((DATA / "en_lecture.flac").read_bytes())
    playlist = tmp_path / "list.ffconcat"
    playlist.write_text("ffconcat version 1.0\nfile clip.flac\n")
    assert len(decode_audio(playlist)) == len(decode_audio(DATA / "en_lecture.flac"))
    with pytest.raises(AudioDecodeError):
        decode_audio(playlist, untrusted=True)


def tone(seconds: float = 2.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def encoded(container_format: str, codec: str, rate: int = 16000, channels: int = 1) -> bytes:
    """A 2 s tone in ``container_format`` / ``codec``, written with PyAV to memory."""
    buffer = io.BytesIO()
    layout = "mono" if channels == 1 else "stereo"
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        if codec == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}
        fmt = stream.codec_context.format.name
        samples = np.tile(tone(2.0, rate), (channels, 1))
        planar = fmt.endswith("p")
        if fmt.startswith("s16"):
            samples = (samples * 32767).astype(np.int16)
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, samples.shape[1], frame_size):
            chunk = samples[:, start : start + frame_size]
            data = chunk if planar else chunk.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


DOCUMENTED = {
    "wav": lambda: encoded("wav", "pcm_s16le"),
    "flac (test clip)": lambda: (DATA / "en_lecture.flac").read_bytes(),
    "mp3 (test clip)": lambda: (DATA / "mixed_batch.mp3").read_bytes(),
    "ogg (test clip)": lambda: (DATA / "mixed_loss.ogg").read_bytes(),
    "ogg opus": lambda: encoded("ogg", "libopus", 48000),
    "ogg vorbis": lambda: encoded("ogg", "vorbis", 44100, channels=2),
    "m4a aac": lambda: encoded("ipod", "aac"),
    "mp4 aac": lambda: encoded("mp4", "aac"),
    "webm opus": lambda: encoded("webm", "libopus", 48000),
    "mka flac": lambda: encoded("matroska", "flac"),
    "aac adts": lambda: encoded("adts", "aac"),
}


@pytest.mark.parametrize("kind", list(DOCUMENTED))
def test_every_documented_format_still_decodes(kind):
    data = DOCUMENTED[kind]()
    declared = probe(io.BytesIO(data), 600)
    audio = decode_upload(io.BytesIO(data), 600)
    assert declared is None or declared > 0.5
    assert len(audio) > 16000 * 0.5 and float(np.abs(audio).max()) > 0.05, kind


def test_the_upload_name_changes_nothing_a_wav_name_on_a_playlist_is_still_a_playlist():
    """FFmpeg sniffs the content; the file name never reaches it, so calling the playlist x.wav cannot help."""
    with pytest.raises(AudioDecodeError):
        probe(io.BytesIO(ATTACKS["ffconcat"]), 600)


@pytest.mark.slow
def test_the_server_answers_415_to_every_attack_without_reading_the_named_file(served_store, monkeypatch):
    """Through a real server (run from the repo root, where the playlists' relative path exists)."""
    monkeypatch.chdir(REPO)
    settings = Settings(models_dir=served_store.store, models=["whisper-tiny.en"], port=free_port(), cpu_threads=2)
    with running_server(settings) as (url, _):
        bodies = {}
        for name, data in ATTACKS.items():
            for route in ("/transcribe", "/v1/audio/transcriptions"):
                started = time.perf_counter()
                response = httpx.post(url + route, files={"file": ("x.wav", data, "audio/wav")}, timeout=120)
                print(f"{name} {route}: {response.status_code} in {(time.perf_counter() - started) * 1000:.1f} ms")
                assert response.status_code == 415, (name, route, response.text)
                bodies[name, route] = response.json()["error"]["message"]
        assert len(set(bodies.values())) == 1  # one message, whatever the playlist names
        real = httpx.post(url + "/transcribe", files={"file": ("x.wav", DOCUMENTED["wav"]())}, timeout=120)
        assert real.status_code == 200, real.text
