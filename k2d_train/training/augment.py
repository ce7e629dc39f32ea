"""SpecAugment on cached encoder states: what a student trained on frozen states sees instead of fresh audio.

With the encoder frozen, every epoch feeds a decoder (or a CTC head) the very same states; masks drawn anew
each step are the cheap way to make a pass over hours of audio unlike the last one. Only the student's input is
masked: its targets (pseudo-labels, the teacher's distributions) come from the clean states."""

from __future__ import annotations

import torch


def mask_states(states: torch.Tensor, generator: torch.Generator, time_masks: int, channel_masks: int,
                max_frames: int = 20) -> torch.Tensor:
    """A copy of ``states`` (batch, frames, width) with, per example, ``time_masks`` spans of up to ``max_frames``
    frames (0.4 s at Whisper's 20 ms) and ``channel_masks`` spans of up to width / 16 channels set to 0."""
    out = states.clone()
    frames, width = out.shape[1], out.shape[2]
    for b in range(out.shape[0]):
        for _ in range(time_masks):
            span = int(torch.randint(0, max_frames + 1, (1,), generator=generator))
            low = int(torch.randint(0, max(1, frames - span), (1,), generator=generator))
            out[b, low : low + span] = 0
        for _ in range(channel_masks):
            span = int(torch.randint(0, width // 16 + 1, (1,), generator=generator))
            low = int(torch.randint(0, max(1, width - span), (1,), generator=generator))
            out[b, :, low : low + span] = 0
    return out
