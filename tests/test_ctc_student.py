"""The CTC / transducer student: units, the transducer loss, greedy search, and one trained on real clips
exported to ONNX and served (HTTP and the WebSocket stream) by ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from k2d.ctc_engine import ctc_greedy
from k2d.engine_contract import Engine
from k2d.transducer_engine import transducer_greedy
from k2d.units import Units
from k2d_train.labels.units import build_units
from k2d_train.stages.s7_distill_ctc import TransducerHead
from k2d_train.training.losses import rnnt_loss
from tests.conftest import MANIFEST


def test_units_spell_both_scripts_and_come_back_as_the_scored_text(tmp_path):
    coder = build_units(["我們用 Gradient Descent 來訓練模型。", "這個 loss function 很重要"], tmp_path)
    ids = coder.encode("我们用 gradient descent 来训练")
    assert coder.units.text(ids) == "我们用 gradient descent 来训练"  # script, case and spacing as scored
    assert coder.units.symbols[0] == "<blk>" and 0 not in ids
    assert Units.load(tmp_path) == coder.units
    assert coder.encode("沒見過的字") == coder.encode("的")  # unseen characters have no unit: they are dropped


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    frames = np.log(np.full((7, 4), 1e-3))
    for t, unit in enumerate([1, 1, 0, 1, 2, 0, 0]):
        frames[t, unit] = 0.0
    emitted, confidence = ctc_greedy(frames, blank=0)
    assert emitted == [(0, 1), (3, 1), (4, 2)] and confidence == pytest.approx(0.0)


def _brute_force(logits: torch.Tensor, labels: list[int]) -> torch.Tensor:
    lp, steps, count = logits.log_softmax(-1)[0], logits.shape[1], len(labels)

    def paths(t: int, u: int) -> list[torch.Tensor]:
        if t == steps - 1 and u == count:
            return [lp[t, u, 0]]
        out = [lp[t, u, labels[u]] + p for p in paths(t, u + 1)] if u < count else []
        return out + ([lp[t, u, 0] + p for p in paths(t + 1, u)] if t < steps - 1 else [])

    return -torch.logsumexp(torch.stack(paths(0, 0)), 0) / count


def test_the_transducer_loss_sums_every_alignment_and_handles_padding():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 4, 3, 5, generator=generator)
    torch.testing.assert_close(rnnt_loss(logits, torch.tensor([[1, 3]]), torch.tensor([4]), torch.tensor([2])),
                               _brute_force(logits, [1, 3]))
    batch = torch.randn(2, 4, 3, 5, generator=generator)
    together = rnnt_loss(batch, torch.tensor([[1, 3], [2, 0]]), torch.tensor([4, 2]), torch.tensor([2, 1]))
    alone = (_brute_force(batch[:1], [1, 3]) + _brute_force(batch[1:, :2, :2], [2])) / 2
    torch.testing.assert_close(together, alone)
    # a batch of empty labels (silence): one path, a blank at every frame (it used to fail to index when T > 1)
    empty = torch.randn(2, 3, 1, 5, generator=generator)
    torch.testing.assert_close(rnnt_loss(empty, torch.zeros(2, 0, dtype=torch.long), torch.tensor([3, 2]),
                                         torch.tensor([0, 0])),
                               -(empty.log_softmax(-1)[0, :, 0, 0].sum() + empty.log_softmax(-1)[1, :2, 0, 0].sum()) / 2)


def test_numpy_greedy_search_uses_the_joiner_the_head_trained():
    head = TransducerHead(width=8, joint=6, units=5, context=2)
    states = torch.randn(1, 10, 8)
    weights = head.numpy_weights()
    encoded = head.encode(states)
    history = torch.tensor([[0, 0]])
    predicted = head.predict(history[:, :0])[:, 0]  # before any label: the predictor sees two blanks
    torch_logits = head.joint_logits(encoded, predicted[:, None])[0, :, 0]
    numpy_pred = np.concatenate([weights["embed"][0], weights["embed"][0]]) @ weights["pred_w"] + weights["pred_b"]
    numpy_logits = np.tanh(encoded[0].detach().numpy() + numpy_pred) @ weights["out_w"] + weights["out_b"]
    np.testing.assert_allclose(torch_logits.detach().numpy(), numpy_logits, rtol=1e-4, atol=1e-5)
    emitted, _ = transducer_greedy(encoded[0].detach().numpy(), weights, blank=0, max_per_frame=3)
    assert all(0 <= frame < 10 for frame, _ in emitted) and len(emitted) <= 30  # bounded by construction


@pytest.fixture(scope="module")
def trained(registry, tmp_path_factory):
    """A CTC head (streaming) trained briefly on the real test clips' own transcripts, exported to ONNX."""
    from k2d.audio import decode_audio
    from k2d_train.stages.s4_student import build_student
    from k2d_train.stages.s7_distill_ctc import CTCOptions, distill_ctc
    from k2d_train.store.onnx_export import export_ctc

    root = tmp_path_factory.mktemp("ctc")
    build_student(registry.path_of("whisper-base-hf"), root / "student", 2)
    rows = []
    for row in (json.loads(line) for line in MANIFEST.read_text().splitlines()):
        if row["text"] and row["language"] == "zh":
            seconds = round(len(decode_audio(MANIFEST.parent / row["audio"])) / 16000, 2)
            rows.append({"audio": str(MANIFEST.parent / row["audio"]), "id": row["audio"], "start": 0.0,
                         "end": seconds, "teacher_text": row["text"], "language": "zh"})
    kept = root / "kept.jsonl"
    kept.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    options = CTCOptions(max_steps=60, batch_size=3, learning_rate=3e-3, eval_every=0, save_every=60,
                         streaming=True, mask_time=0, mask_channels=0, quantization="float32")
    report = distill_ctc(root / "student", kept, root / "run", options, out_dir=root / "final")
    export_ctc(root / "final", root / "onnx", "float32")
    return root, rows, report


@pytest.mark.slow
def test_an_exported_streaming_ctc_student_transcribes_the_same_live_and_offline(trained):
    from k2d.audio import decode_audio
    from k2d.ctc_engine import CTCEngine
    from k2d.engine import DecodeOptions
    from k2d.streaming import StreamDecoder

    root, rows, report = trained
    assert report["steps"] == 60 and report["last"]["loss"] < 5
    engine = CTCEngine(root / "onnx")
    assert engine.capabilities.streaming and not engine.capabilities.prompts and engine.knows_language("zh")
    assert isinstance(engine, Engine)  # the serving contract, checked structurally
    for row in rows:
        audio = decode_audio(row["audio"])
        (offline,) = engine.transcribe_batch([audio], ["zh"], DecodeOptions(word_timestamps=True))
        live = StreamDecoder(engine)
        deltas = [live.feed(audio[i : i + 2000]) for i in range(0, len(audio), 2000)]
        assert live.finish().replace(" ", "") == offline.text.replace(" ", "")
        assert "".join(deltas).replace(" ", "") in offline.text.replace(" ", "")
        for segment in offline.segments:
            assert 0 <= segment.start <= segment.end <= len(audio) / 16000 + 0.02
            assert all(segment.start <= w["start"] <= segment.end for w in segment.words)


@pytest.mark.slow
def test_the_ctc_student_is_served_over_http_and_streams_over_a_websocket(registry, trained, tmp_path):
    """A real server with the ONNX student beside its teacher: POST /transcribe answers from ONNX Runtime (no
    guard, no teacher fallback), and the WebSocket sends a partial transcript within 1 s of the first chunk."""
    import base64

    import httpx
    from websockets.sync.client import connect

    from app.settings import Settings
    from k2d.audio import decode_audio
    from k2d.registry import ModelEntry, Registry, Serving
    from tests.conftest import free_port, running_server

    root, rows, _ = trained
    store = Registry(tmp_path)
    base = registry.get("whisper-base")
    store.add(ModelEntry(**{**base.__dict__, "path": str(registry.path_of("whisper-base"))}))
    store.add(ModelEntry("tiny-ctc", "onnx", str(root / "onnx"), role="student", languages=["zh"],
                         serving=Serving(teacher="whisper-base", default_language="zh", engine="ctc")))
    settings = Settings(models_dir=tmp_path, port=free_port(), cpu_threads=2)
    with running_server(settings) as (url, app):
        assert set(app.state.models.models) == {"tiny-ctc", "whisper-base"}
        with open(rows[0]["audio"], "rb") as fh:  # one window, as the stream gets it
            answer = httpx.post(f"{url}/transcribe", files={"file": fh}, data={"vad": "false"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["model"] == "tiny-ctc", answer.text
        assert not any(s["fallback"] for s in answer.json()["segments"])
        with open(rows[0]["audio"], "rb") as fh:
            prompted = httpx.post(f"{url}/transcribe", files={"file": fh}, data={"prompt": "你好"}, timeout=60)
        assert prompted.status_code == 422  # no decoder to prompt: said, not ignored
        audio = decode_audio(rows[0]["audio"])
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        with connect(f"ws://127.0.0.1:{settings.port}/v1/realtime/transcription", open_timeout=30) as ws:
            created = json.loads(ws.recv(timeout=30))
            assert created["type"] == "transcription_session.created" and created["model"] == "tiny-ctc"
            chunk = 2 * int(0.64 * 16000)
            tail = len(pcm) - 3200  # the last 0.1 s as an OpenAI-style JSON event, the rest as binary frames
            half = (tail // 2) // chunk * chunk
            for begin in range(0, half, chunk):
                ws.send(pcm[begin : begin + chunk])
            live = json.loads(ws.recv(timeout=120))  # text while the speaker is still talking: before the rest
            assert live["type"].endswith(".delta") and live["delta"], live
            for begin in range(half, tail, chunk):
                ws.send(pcm[begin : min(begin + chunk, tail)])
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[tail:]).decode()}))
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while not (event := json.loads(ws.recv(timeout=60)))["type"].endswith(".completed"):
                pass
            assert event["transcript"].replace(" ", "") == answer.json()["text"].replace(" ", "")
            ws.send(json.dumps({"type": "no.such.event"}))
            assert json.loads(ws.recv(timeout=30))["type"] == "error"  # bad input: an error event, not a dead stream
            ws.send(b"\x00")  # half a sample
            assert json.loads(ws.recv(timeout=30))["error"]["message"].startswith("audio must be 16-bit")
            for bad in MALFORMED:  # each answered with an error event; the stream goes on
                ws.send(bad)
                assert json.loads(ws.recv(timeout=30))["type"] == "error", bad[:40]
            ws.send(pcm[: 2 * 16000])
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while (event := json.loads(ws.recv(timeout=60)))["type"].endswith(".delta"):
                pass
            assert event["type"] == "conversation.item.input_audio_transcription.completed"


MALFORMED = ['{"audio": 123}', "not json", "[" * 100_000, '{"type": "input_audio_buffer.append", "audio": 123}',
             '{"type": "input_audio_buffer.append", "audio": [1, 2]}', '{"type": "input_audio_buffer.append"}',
             '{"type": "input_audio_buffer.append", "audio": "!!"}', '{"type": 5}', '{"type": {"a": []}}', "[]",
             "null", '"text"', "字" * 400_000]


@pytest.mark.slow
def test_a_paused_ctc_stage_publishes_nothing_and_resumes_to_the_straight_runs_losses(trained, tmp_path):
    """The CTC head runs the one training loop: ``stop_after_steps`` checkpoints without publishing, and the
    resumed run repeats an uninterrupted one step for step (no masking: every loss is deterministic)."""
    from dataclasses import replace

    from k2d_train.stages.s7_distill_ctc import CTCOptions, distill_ctc

    root, _, _ = trained
    options = CTCOptions(max_steps=4, batch_size=3, warmup_steps=1, eval_every=0, save_every=10, mask_time=0,
                         mask_channels=0)
    distill_ctc(root / "student", root / "kept.jsonl", tmp_path / "straight", options, out_dir=tmp_path / "final-a")
    paused = distill_ctc(root / "student", root / "kept.jsonl", tmp_path / "paused",
                         replace(options, stop_after_steps=2), out_dir=tmp_path / "final-b")
    assert paused["steps"] == 2 and not (tmp_path / "final-b").exists()
    resumed = distill_ctc(root / "student", root / "kept.jsonl", tmp_path / "paused", options,
                          out_dir=tmp_path / "final-b")
    assert resumed["steps"] == 4 and (tmp_path / "final-b").is_dir()
    logs = {name: [json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
            for name in ("straight", "paused")}
    assert [(r["step"], r["lr"]) for r in logs["paused"]] == [(r["step"], r["lr"]) for r in logs["straight"]]
    assert [r["loss"] for r in logs["paused"]] == pytest.approx([r["loss"] for r in logs["straight"]], rel=1e-4)


@pytest.mark.slow
def test_a_transducer_student_is_served_by_its_own_engine_under_the_contract(trained, tmp_path):
    from k2d.audio import decode_audio
    from k2d.engine import DecodeOptions
    from k2d.served import serve_one
    from k2d.transducer_engine import TransducerEngine
    from k2d_train.stages.s7_distill_ctc import CTCOptions, distill_ctc
    from k2d_train.store.onnx_export import export_ctc

    root, rows, _ = trained
    options = CTCOptions(head="transducer", max_steps=3, batch_size=3, eval_every=0, save_every=10, mask_time=0,
                         mask_channels=0, quantization="float32")
    distill_ctc(root / "student", root / "kept.jsonl", tmp_path / "run", options, out_dir=tmp_path / "final")
    export_ctc(tmp_path / "final", tmp_path / "onnx", "float32")
    (tmp_path / "store").mkdir()
    engine = serve_one(str(tmp_path / "onnx"), tmp_path / "store").engine  # the kind comes from the head's file
    assert isinstance(engine, TransducerEngine) and isinstance(engine, Engine)
    assert not engine.capabilities.loops and not engine.capabilities.streaming
    audio = decode_audio(rows[0]["audio"])
    (result,) = engine.transcribe_batch([audio], ["zh"], DecodeOptions(word_timestamps=True))
    assert result.language == "zh" and all(s.end <= len(audio) / 16000 + 0.05 for s in result.segments)
