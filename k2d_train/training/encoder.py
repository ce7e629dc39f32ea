"""A Whisper encoder forward pass that accepts fewer than 3,000 feature frames.

transformers' ``WhisperEncoder.forward`` insists on 30 s of input; CTranslate2 (what we serve)
does not — it cuts the sinusoidal position table to the input's length. This function computes
exactly that with the encoder's own modules, so a short-context student is trained and evaluated
on the computation it will be served with, and it can return intermediate layers for
layer-wise distillation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def encode(encoder, features: torch.Tensor, layers: list[int] | None = None,
           frozen_below: int = 0) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """``(B, mels, T)`` → final hidden states ``(B, T / 2, d)`` and the outputs of ``layers`` (1-based).

    ``frozen_below``: the convolutions and the first N layers run without autograd (a cheaper
    step when only the top layers are trained)."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and frozen_below == 0):
        hidden = F.gelu(encoder.conv1(features))
        hidden = F.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]].to(hidden.dtype)
        hidden = F.dropout(hidden, p=encoder.dropout, training=encoder.training)
    wanted, outputs = set(layers or []), {}
    grad = torch.is_grad_enabled()
    for index, layer in enumerate(encoder.layers, start=1):
        with torch.set_grad_enabled(grad and index > frozen_below):
            hidden = layer(hidden, None)
        if isinstance(hidden, tuple):  # older transformers return (hidden, attentions)
            hidden = hidden[0]
        if index in wanted:
            outputs[index] = hidden
    return encoder.layer_norm(hidden), outputs
