"""The model card written next to every exported student: what it is, how it was made, how good
and how fast it measured — so a served model can always be traced back to its run."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path


def render(card: dict) -> str:
    ev, speed = card.get("evaluation", {}), card.get("speed", {})
    teacher, student = ev.get("teacher", {}), ev.get("student", {})
    lines = [
        f"# {card['name']}",
        "",
        f"K²D student of **{card['teacher']}** ({card['decoder_layers_kept']} decoder layers kept: "
        f"{card['kept_layers']}), validated with **{card['validator']}**, built {card['date']}.",
        "",
        "| | teacher | student |",
        "|---|---|---|",
        f"| parameters | {card['teacher_parameters']:,} | {card['student_parameters']:,} |",
    ]
    for metric in ("mer", "cer_zh", "wer_en", "repetitions"):
        if metric in teacher:
            lines.append(f"| {metric} (test) | {teacher[metric]} | {student.get(metric)} |")
    lines += [
        "",
        f"- Filtering rule **{card['rule']}** (α = {card['alpha']}): kept {card['kept_percent']:.1f}% of the "
        f"pseudo-labelled audio ({card['kept_chunks']} chunks).",
        f"- Distillation: {card['steps']} steps on {card['examples']} examples.",
    ]
    if speed:
        lines.append(f"- Speed ({speed.get('device', 'cpu')}, {speed.get('compute_type')}): end-to-end "
                     f"{speed.get('end_to_end_speedup', 0):.2f}× the teacher on the test set; forced-length "
                     f"decode {speed.get('decode_ratio', 0):.2f}×, encode {speed.get('encode_ratio', 0):.2f}×.")
    if "ablation" in card:
        lines += ["", "Filtering ablation (same steps, test MER):", ""]
        lines += [f"- rule `{rule}`: MER {result['mer']}" for rule, result in card["ablation"].items()]
    lines += ["", f"Test manifest: `{card.get('test_manifest')}`. Config: `{card.get('config')}`."]
    return "\n".join(lines) + "\n"


def write_card(directory: Path, card: dict) -> None:
    card = {"date": dt.date.today().isoformat(), **card}
    (directory / "k2d_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    (directory / "MODEL_CARD.md").write_text(render(card), encoding="utf-8")
