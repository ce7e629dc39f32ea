"""Batched greedy decoding of a transformers Whisper from encoder outputs.

Used for the dev-set MER while distilling and to evaluate transformers checkpoints. It feeds
the same prompt the server uses (``<|sot|><|lang|><|transcribe|>``, timestamps on) and strips
the timestamp tokens from the text, so dev MER tracks what the exported model will do.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy_decode(model, encoder_hidden: torch.Tensor, prompt: list[int], eot: int, max_new_tokens: int = 200,
                  suppress: list[int] | None = None) -> list[list[int]]:
    """Token ids generated after ``prompt`` for each row of ``encoder_hidden`` (B, frames, d)."""
    batch = encoder_hidden.shape[0]
    ids = torch.tensor([prompt] * batch, device=encoder_hidden.device)
    done = torch.zeros(batch, dtype=torch.bool, device=encoder_hidden.device)
    generated: list[list[int]] = [[] for _ in range(batch)]
    past = None
    encoder_outputs = (encoder_hidden,)
    for _ in range(max_new_tokens):
        step = model(encoder_outputs=encoder_outputs, decoder_input_ids=ids if past is None else ids[:, -1:],
                     past_key_values=past, use_cache=True)
        past = step.past_key_values
        logits = step.logits[:, -1].float()
        if suppress:
            logits[:, suppress] = float("-inf")
        token = logits.argmax(-1)
        token = torch.where(done, torch.full_like(token, eot), token)
        for row in range(batch):
            if not done[row] and int(token[row]) != eot:
                generated[row].append(int(token[row]))
        done |= token == eot
        if bool(done.all()):
            break
        ids = torch.cat([ids, token[:, None]], dim=1)
    return generated
