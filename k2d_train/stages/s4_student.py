"""``k2d student``: initialise a student from a teacher — full encoder, N decoder layers.

As in distil-whisper and K²D, the encoder is copied whole (and frozen while distilling) and the
decoder keeps layers at maximally spaced indices (2 of 32: the first and the last), which
preserves the input embedding path and the final layer's output distribution. Alignment heads
(for word timestamps) are re-pointed to the layers the student still has.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from k2d.registry import ModelEntry, Registry, Serving
from k2d_train.store.operations import hf_name
from k2d_train.store.publish import partial_dir, publish


def spaced_layers(total: int, keep: int) -> list[int]:
    """Maximally spaced indices: ``spaced_layers(32, 2) == [0, 31]``, ``spaced_layers(6, 3) == [0, 2, 5]``."""
    if not 1 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} decoder layers")
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def remap_alignment_heads(heads: list[list[int]], kept: list[int], num_heads: int) -> list[list[int]]:
    """Keep heads on surviving layers (renumbered); if none survive, use every head of the last layer."""
    new_index = {old: new for new, old in enumerate(kept)}
    remapped = [[new_index[layer], head] for layer, head in heads if layer in new_index]
    return remapped or [[len(kept) - 1, h] for h in range(num_heads)]


@dataclass
class StudentReport:
    name: str
    kept_layers: list[int]
    teacher_parameters: int
    student_parameters: int
    path: Path


def build_student(teacher_dir: Path, out_dir: Path, decoder_layers: int = 2, encoder_layers: int | None = None,
                  encoder_ffn_ratio: float = 1.0) -> tuple[list[int], int, int]:
    """Write the student checkpoint; return kept decoder layer indices and both parameter counts.

    ``encoder_layers`` (fewer, maximally spaced: shallow-and-wide) and ``encoder_ffn_ratio`` (< 1 keeps
    the most important FFN neurons of every layer: deep-and-thin) give a smaller encoder that
    ``k2d distill-encoder`` then trains; the defaults keep the teacher's encoder whole.
    """
    from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperTokenizer

    teacher = WhisperForConditionalGeneration.from_pretrained(teacher_dir)
    kept = spaced_layers(teacher.config.decoder_layers, decoder_layers)
    kept_encoder = spaced_layers(teacher.config.encoder_layers, encoder_layers or teacher.config.encoder_layers)
    ffn = int(round(teacher.config.encoder_ffn_dim * encoder_ffn_ratio))
    config = teacher.config.__class__.from_dict({**teacher.config.to_dict(), "decoder_layers": len(kept),
                                                 "encoder_layers": len(kept_encoder), "encoder_ffn_dim": ffn})
    student = WhisperForConditionalGeneration(config)
    state = _keep_layers(teacher.state_dict(), "model.decoder.layers.", kept)
    state = _keep_layers(state, "model.encoder.layers.", kept_encoder)
    if ffn < teacher.config.encoder_ffn_dim:
        _thin_ffn(state, len(kept_encoder), ffn)
    student.load_state_dict(state, strict=True)
    generation = GenerationConfig.from_pretrained(teacher_dir)
    generation.alignment_heads = remap_alignment_heads(
        generation.alignment_heads or [], kept, config.decoder_attention_heads
    )
    student.generation_config = generation
    staging = partial_dir(out_dir)
    student.save_pretrained(staging)
    WhisperTokenizer.from_pretrained(teacher_dir).save_pretrained(staging)
    for name in ("tokenizer.json", "preprocessor_config.json"):
        (staging / name).write_bytes((teacher_dir / name).read_bytes())
    (staging / "k2d_student.json").write_text(json.dumps({"teacher": str(teacher_dir), "kept_layers": kept}, indent=2))
    publish(staging, out_dir)
    count = sum(p.numel() for p in teacher.parameters())
    return kept, count, sum(p.numel() for p in student.parameters())


def _keep_layers(state: dict, prefix: str, kept: list[int]) -> dict:
    """Renumber the kept layers 0..n-1 and drop the others."""
    out = {k: v for k, v in state.items() if not k.startswith(prefix)}
    for new, old in enumerate(kept):
        for key in [k for k in state if k.startswith(f"{prefix}{old}.")]:
            out[f"{prefix}{new}." + key[len(f"{prefix}{old}.") :]] = state[key]
    return out


def _thin_ffn(state: dict, layers: int, width: int) -> None:
    """Keep the ``width`` FFN neurons with the largest |fc1 row| · |fc2 column| in each encoder layer."""
    for i in range(layers):
        p = f"model.encoder.layers.{i}."
        importance = state[p + "fc1.weight"].norm(dim=1) * state[p + "fc2.weight"].norm(dim=0)
        keep = importance.topk(width).indices.sort().values
        state[p + "fc1.weight"] = state[p + "fc1.weight"][keep].clone()
        state[p + "fc1.bias"] = state[p + "fc1.bias"][keep].clone()
        state[p + "fc2.weight"] = state[p + "fc2.weight"][:, keep].clone()


def create_student(registry: Registry, teacher: str, name: str, decoder_layers: int = 2, encoder_layers: int | None = None,
                   encoder_ffn_ratio: float = 1.0) -> StudentReport:
    """Build ``<name>/hf`` in the store from a registered teacher and register it (role student)."""
    out_dir = registry.folder(name, "hf")  # a checked name: never a folder outside the store
    teacher_entry = registry.get(teacher if registry.get(teacher).format == "transformers" else hf_name(teacher))
    kept, teacher_params, student_params = build_student(registry.path_of(teacher_entry.name), out_dir, decoder_layers,
                                                         encoder_layers, encoder_ffn_ratio)
    register_student(registry, name, out_dir, student_params, teacher_entry, f"student-of:{teacher_entry.family}", kept)
    return StudentReport(hf_name(name), kept, teacher_params, student_params, out_dir)


def register_student(registry: Registry, name: str, hf_dir: Path, parameters: int, teacher: ModelEntry, source: str,
                     kept_layers: list[int]) -> ModelEntry:
    """Register a student's transformers checkpoint as ``<name>-hf`` (role student)."""
    entry = ModelEntry(
        name=hf_name(name), format="transformers", path=os.path.relpath(hf_dir, registry.store), role="student",
        parameters=parameters, languages=teacher.languages, quantization="float32", source=source, family=name,
        serving=Serving(teacher=teacher.family), extra={"kept_decoder_layers": kept_layers},
    )
    registry.add(entry)
    return entry
