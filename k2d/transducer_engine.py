"""A transducer student served by ONNX Runtime (kind ``transducer``): the distilled encoder's states through
the ONNX graph, then frame-synchronous greedy search with a stateless predictor and joiner in numpy.

Like CTC it cannot loop (at most a few units per frame, then the frames move on), so it has no guard and no
teacher fallback; it shares the ONNX session, units, segments and words with the CTC head
(:class:`k2d.ctc_engine.HeadEngine`).
"""

from __future__ import annotations

import numpy as np

from k2d.ctc_engine import JOINER_FILE, HeadEngine


class TransducerEngine(HeadEngine):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.joiner = dict(np.load(self.path / JOINER_FILE))

    def emit(self, frames: np.ndarray) -> tuple[list[tuple[int, int]], float]:
        return transducer_greedy(frames, self.joiner, self.units.blank)


def transducer_greedy(encoded: np.ndarray, weights: dict[str, np.ndarray], blank: int,
                      max_per_frame: int = 3) -> tuple[list[tuple[int, int]], float]:
    """Frame-synchronous greedy search: at each frame emit units until the joiner says blank (at most
    ``max_per_frame``: a bound, not a loop guard — a transducer moves on with the frames). The predictor is
    stateless: it sees the last ``context`` units (Ghodsi et al. 2020)."""
    context = int(weights["context"])
    history = [blank] * context
    emitted, scores = [], []
    embed, pred_w, pred_b = weights["embed"], weights["pred_w"], weights["pred_b"]
    out_w, out_b = weights["out_w"], weights["out_b"]

    def predictor() -> np.ndarray:
        return np.concatenate([embed[u] for u in history[-context:]]) @ pred_w + pred_b

    predicted = predictor()
    for frame, enc in enumerate(encoded):
        for _ in range(max_per_frame):
            logits = np.tanh(enc + predicted) @ out_w + out_b
            unit = int(logits.argmax())
            scores.append(float(logits[unit] - np.logaddexp.reduce(logits)))
            if unit == blank:
                break
            emitted.append((frame, unit))
            history.append(unit)
            predicted = predictor()
    return emitted, float(np.mean(scores)) if scores else 0.0
