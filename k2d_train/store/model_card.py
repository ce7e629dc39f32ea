"""The model card written next to every exported student: what it is, how it was made, how good
and how fast it measured in and out of domain — so a served model can always be traced back to its run."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from k2d.guard import RepetitionPenalty


def _evaluation_table(rows: list[dict]) -> list[str]:
    lines = ["| set | model | context | MER | loops | fallbacks | latency p50 ms | speed-up p50 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['model']} | {r['context']} | {r['mer']:.3f} | {r['repetitions']} | "
                     f"{r['fallbacks']} | {r['latency_ms_p50']:.0f} | {r['speedup_p50']:.2f}× |")
    return lines


def _kept_hours(card: dict) -> str:
    """The kept rule's hours, speech and chunk audio apart (a card from before the split has neither)."""
    row = card.get("kept_per_rule", {}).get(card["rule"], {})
    if "chunk_hours" not in row:
        return ""
    return f": {row['chunk_hours']:.2f} h of audio, {row['speech_hours']:.2f} h of it speech segments"


def _kept(best: dict | None) -> str:
    """The kept step and why: the out-of-domain dev selection (guarded MER + share of looping rows)."""
    if not best:
        return "the last step"
    if "dev_guarded" not in best:  # a card from before the guarded selection
        return f"step {best['step']} (out-of-domain dev MER {best['dev_mer']:.3f})"
    return (f"step {best['step']} (out-of-domain dev, greedy: guarded MER {best['dev_guarded']:.3f}, "
            f"{best['dev_loops']} of {best['dev_rows']} rows looping, raw MER {best['dev_mer']:.3f})")


def render(card: dict) -> str:
    repetition = RepetitionPenalty(**card.get("repetition", {}))  # the one the student is served with
    lines = [
        f"# {card['name']}",
        "",
        f"K²D student of **{card['teacher']}** ({card['decoder_layers_kept']} decoder layers kept: "
        f"{card['kept_layers']}; encoder {card.get('student_shape') or 'as the teacher'}), validated with "
        f"**{card['validator']}**, built {card['date']}. Encoder context: **{card.get('context', '30 s')}**; "
        f"decoding repetition penalty {repetition.value:g} on windows ≤ {repetition.max_window_s:g} s.",
        "",
        f"Parameters: teacher {card['teacher_parameters']:,}, student {card['student_parameters']:,}.",
        "",
        "Measured through the serving path (`test` = in-domain: training voices, unseen sentences; "
        "`test_ood` = voices and sentences never in training):",
        "",
        *_evaluation_table(card.get("evaluation", [])),
        "",
        f"- Filtering rule **{card['rule']}** (α = {card['alpha']}): kept {card['kept_percent']:.1f}% of the "
        f"pseudo-labelled speech ({card['kept_chunks']} training chunks{_kept_hours(card)}).",
        f"- Decoder distillation: {card['steps']} steps on {card['examples']} examples; kept checkpoint "
        f"{_kept(card.get('best_dev'))}.",
    ]
    if card.get("encoder_distillation"):
        lines.append(f"- Encoder distillation: {card['encoder_distillation']['steps']} steps on "
                     f"{card['encoder_distillation']['chunks']} chunks.")
    if card.get("ablation"):
        lines += ["", "Filtering ablation (same steps):", ""]
        for rule, result in card["ablation"].items():
            mers = ", ".join(f"{name} MER {s['mer']}" for name, s in result["scores"].items())
            lines.append(f"- rule `{rule}` ({result['kept_chunks']} chunks): {mers}")
    lines += ["", f"Config: `{card.get('config')}`. Compute: {card.get('device')}, {card.get('compute_type')}."]
    return "\n".join(lines) + "\n"


def write_card(directory: Path, card: dict) -> None:
    card = {"date": dt.date.today().isoformat(), **card}
    (directory / "k2d_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    (directory / "MODEL_CARD.md").write_text(render(card), encoding="utf-8")
