"""Training labels built from what the teacher emitted: its token ids per segment, timestamps as ids.

Rebuilding labels from stripped text re-tokenises it (``<|3.64|>distribution`` is not what the
teacher generated), so each segment keeps the teacher's own ids; they are re-encoded only where
the script conversion actually changed the segment's text. Timestamp tokens are inserted as ids,
never parsed back out of a string.
"""

from __future__ import annotations

from k2d.scoring import to_script
from k2d_train.labels.chunking import timestamp_steps


def chunk_label_ids(row: dict, tokenizer, script: str = "simplified") -> list[int]:
    """``<|t0|> ids <|t1|><|t2|> ids <|t3|>…`` for one pseudo-labelled chunk (prompt and EOT excluded)."""
    segments = row.get("segments")
    if not segments:  # older chunk files: the label text with timestamp markup
        return tokenizer.encode(to_script(row["teacher_label"], script), add_special_tokens=False)
    zero = tokenizer.convert_tokens_to_ids("<|0.00|>")
    ids: list[int] = []
    for segment in segments:
        text = segment["text"]
        converted = to_script(text, script)
        tokens = segment.get("tokens") if converted == text and segment.get("tokens") else \
            tokenizer.encode(converted, add_special_tokens=False)
        if not converted.strip():
            continue
        ids += [zero + timestamp_steps(segment["start"] - row["start"]), *tokens,
                zero + timestamp_steps(segment["end"] - row["start"])]
    return ids
