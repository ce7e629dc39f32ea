"""Export a CTC / transducer student to ONNX (int8 dynamic quantisation) for ``k2d.ctc_engine``.

One graph: log-mel features (B, mels, frames) → the distilled encoder (cut to the input's length, as
CTranslate2 serves Whisper's) → the head. A CTC head ends in log-probabilities per frame; a
transducer's graph ends at the encoder projection, and its predictor and joiner go to ``transducer.npz``
for the greedy search (a few small products per frame, run in numpy).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from k2d.context import ContextPolicy
from k2d.ctc_engine import HEAD_FILE, JOINER_FILE, MODEL_FILE
from k2d.units import UNITS_FILE


class _Graph(torch.nn.Module):
    def __init__(self, encoder, head):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        from k2d_train.stages.s7_distill_ctc import CTCHead
        from k2d_train.training.encoder import encode

        states, _ = encode(self.encoder, mel)
        return self.head(states) if isinstance(self.head, CTCHead) else self.head.encode(states)


def export_ctc(trained: Path, out_dir: Path, quantization: str = "int8", language: str = "zh") -> Path:
    """``trained``: the folder ``k2d distill-ctc`` published (head, units, options, encoder path)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import WhisperForConditionalGeneration

    from k2d_train.stages.s7_distill_ctc import CTCOptions, make_head
    from k2d_train.store.publish import partial_dir, publish

    meta = json.loads((trained / "k2d_ctc.json").read_text())
    options = CTCOptions(**meta["options"])
    encoder_dir = Path(meta["encoder"])
    encoder = WhisperForConditionalGeneration.from_pretrained(encoder_dir).model.encoder.eval()
    units = json.loads((trained / UNITS_FILE).read_text(encoding="utf-8"))["units"]
    head = make_head(options, encoder.config.d_model, len(units))
    head.load_state_dict(torch.load(trained / "head.pt", map_location="cpu"))
    head.eval()
    staging = partial_dir(out_dir)
    staging.mkdir()
    graph = _Graph(encoder, head).eval()
    mels = encoder.config.num_mel_bins
    plain = staging / "model.float32.onnx"
    with torch.no_grad():
        torch.onnx.export(graph, (torch.zeros(1, mels, 400),), str(plain), input_names=["mel"], output_names=["out"],
                          dynamic_axes={"mel": {0: "batch", 2: "frames"}, "out": {0: "batch", 1: "steps"}},
                          opset_version=17, dynamo=False)
    if quantization == "int8":
        quantize_dynamic(str(plain), str(staging / MODEL_FILE), weight_type=QuantType.QInt8)
        plain.unlink()
    else:
        plain.rename(staging / MODEL_FILE)
    shutil.copy(trained / UNITS_FILE, staging / UNITS_FILE)
    if options.head == "transducer":
        np.savez(staging / JOINER_FILE, **head.numpy_weights())
    (staging / HEAD_FILE).write_text(json.dumps({"kind": options.head, "language": language, "mels": mels,
                                                 "quantization": quantization, "units": len(units),
                                                 "streaming": options.windows.to_dict() if options.windows else None},
                                                indent=2) + "\n")
    options.policy(ContextPolicy.of_model(encoder_dir)).save(staging)
    return publish(staging, out_dir)


def publish_ctc_student(registry, name: str, trained: Path, quantization: str, language: str, teacher: str | None,
                        source: str):
    """Export the trained head to ``<store>/<name>/onnx-<q>`` and register it as a student served by ONNX
    Runtime beside its teacher (``k2d run`` stage 8 and ``k2d distill-ctc`` alike)."""
    import onnx

    from k2d.registry import ModelEntry, Serving

    meta = json.loads((trained / "k2d_ctc.json").read_text())
    out = registry.folder(name, f"onnx-{quantization}")  # a checked name: never a folder outside the store
    export_ctc(trained, out, quantization, language)
    parameters = sum(int(np.prod(t.dims)) for t in onnx.load(str(out / MODEL_FILE)).graph.initializer)
    entry = ModelEntry(name, "onnx", str(out.relative_to(registry.store)), role="student", parameters=parameters,
                       languages=[language], quantization=quantization, source=source, family=name,
                       serving=Serving(teacher=teacher, default_language=language, engine=meta["options"]["head"]))
    registry.add(entry)
    return entry

