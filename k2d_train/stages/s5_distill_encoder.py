"""``k2d distill-encoder``: teach the student's encoder to work on the clip plus a short margin.

Whisper's encoder always processes 30 s; on a CPU that is most of a short utterance's cost. The
student's encoder (the teacher's, or a shallower / thinner copy of it) sees the chunk followed by
a short, random amount of padding, with SpecAugment masks, and learns to reproduce the teacher
encoder's hidden states computed on the standard 30 s input at the same frames: L1 + cosine on
the final output (what the decoder reads) and, through small prediction heads, on chosen
intermediate layers (layer-wise regression, Wang et al., arXiv 2210.15631), plus a
discriminative frame-contrastive term. Extra teachers (e.g. tiny.en) add their own heads: stage 1
of multi-teacher distillation (Yang et al., arXiv 2303.10917). Unlabelled audio only: the
pseudo-labelled chunks' audio, no text. Resumable (Accelerate checkpoints), progress bar.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from k2d.context import FULL_FRAMES, mel_frames
from k2d.engine import HOP_LENGTH
from k2d.manifest import read_manifest
from k2d_train.data import augment
from k2d_train.pipeline.options import EncoderDistillOptions
from k2d_train.pipeline.sharding import Processes
from k2d_train.training.encoder import encode
from k2d_train.training.encoder_states import ClipReader, CT2Encoder, EncoderStates, teacher_identity
from k2d_train.training.loop import fit, make_accelerator
from k2d_train.training.losses import frame_contrastive, layer_regression

BUCKET_S = 4.0  # chunks of similar length share a batch, so short chunks are not padded to long ones
@dataclass
class Chunk:
    key: str
    audio: Path
    start: float
    end: float


def heard_chunks(kept: Path, max_crop_s: float | None) -> list[Chunk]:
    """Each kept chunk as the student hears it: its first ``max_crop_s`` seconds. The teacher's targets are
    computed on exactly this span (padded to 30 s), so every target frame describes audio the student got
    — the teacher's states of the *whole* chunk would ask the student's padding frames for speech that was
    cut off."""
    crop = max_crop_s or float("inf")
    return [Chunk(row.extra["id"], row.path(kept), row.extra["start"], min(row.extra["end"], row.extra["start"] + crop))
            for row in read_manifest(kept)]


def spec_augment(features: torch.Tensor, generator: torch.Generator, masks: int = 2, max_time: int = 40,
                 max_freq: int = 12) -> torch.Tensor:
    """Time and frequency masks (Park et al. 2019) on the student's input only: the target stays clean."""
    out = features.clone()
    batch, mels, frames = out.shape
    for b in range(batch):
        for _ in range(masks):
            width = int(torch.randint(0, max_freq + 1, (1,), generator=generator))
            low = int(torch.randint(0, max(1, mels - width), (1,), generator=generator))
            out[b, low : low + width] = 0
            width = int(torch.randint(0, max_time + 1, (1,), generator=generator))
            low = int(torch.randint(0, max(1, frames - width), (1,), generator=generator))
            out[b, :, low : low + width] = 0
    return out


class StudentSide(torch.nn.Module):
    """Everything a step trains, as one module whose forward is the whole student side of the step: the encoder
    on the short input (and on the 30 s one on full-context steps), and small heads mapping student layer i to
    teacher layer i and the final states to each extra teacher. Under N processes DDP syncs gradients only
    through a module's own forward, so nothing trained may be called around it (issue 31: stage 5 could not
    run under 2 processes)."""

    def __init__(self, encoder, width: int, layers: list[int], extra_widths: list[int], frozen_below: int):
        super().__init__()
        self.encoder, self.frozen_below = encoder, frozen_below
        self.layers = torch.nn.ModuleDict({str(i): torch.nn.Linear(width, width) for i in layers})
        self.extra = torch.nn.ModuleList([torch.nn.Linear(width, w) for w in extra_widths])

    def forward(self, features: torch.Tensor, full: torch.Tensor | None = None) -> dict:
        """``{"final", "hints": {layer: predicted teacher layer}, "extra": [per extra teacher], "whole"}``."""
        final, layers = encode(self.encoder, features, [int(i) for i in self.layers], self.frozen_below)
        whole = None if full is None else encode(self.encoder, full, frozen_below=self.frozen_below)[0]
        return {"final": final, "hints": {int(i): head(layers[int(i)]) for i, head in self.layers.items()},
                "extra": [head(final) for head in self.extra], "whole": whole}


def _load_encoder(name_or_dir: str, store: Path | None):
    from transformers import WhisperForConditionalGeneration

    from k2d.registry import resolve_model

    path = Path(name_or_dir) if Path(name_or_dir).is_dir() else resolve_model(name_or_dir, store)[0]
    return WhisperForConditionalGeneration.from_pretrained(path).model.encoder.eval()


def distill_encoder(teacher_dir: Path, student_dir: Path, kept: Path, run_dir: Path, options: EncoderDistillOptions,
                    out_dir: Path, store: Path | None = None, resume: bool = True, teacher_cache: Path | None = None,
                    teacher_ct2: Path | None = None) -> dict:
    """Train the student encoder; write the whole student (new encoder, same decoder) to ``out_dir``."""
    from transformers import WhisperForConditionalGeneration

    accelerator = make_accelerator(options)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = accelerator.device
    student = WhisperForConditionalGeneration.from_pretrained(student_dir)
    encoder = student.model.encoder
    # CTranslate2 computes the final states more cheaply; transformers only when intermediate layers are wanted
    teacher = None if teacher_ct2 is not None and not options.target_layers else _load_encoder(str(teacher_dir), store).to(device)
    chunks = heard_chunks(kept, options.max_crop_s)
    if options.extra_audio:  # unlabelled audio for this stage only: the encoder needs no transcript
        chunks += heard_chunks(Path(options.extra_audio), options.max_crop_s)
    if not chunks:
        raise ValueError(f"{kept}: no chunks to learn from")
    if options.max_chunks and len(chunks) > options.max_chunks:
        chunks = [chunks[i * len(chunks) // options.max_chunks] for i in range(options.max_chunks)]
    extra = [_load_encoder(name, store).to(device) for name in options.extra_teachers]
    depth = {i: round(i * len(teacher.layers) / len(encoder.layers)) for i in options.target_layers}
    # the teacher's 30 s states: targets here, and the KL inputs of the decoder stage (a shared cache)
    states_by = CT2Encoder(teacher_ct2, device.type) if teacher_ct2 is not None and not depth else teacher
    caches = [EncoderStates(states_by, (teacher_cache or run_dir / "targets") if options.cache else None, device,
                            lambda _: FULL_FRAMES, tuple(sorted(set(depth.values()))), _target_frames(options),
                            identity=teacher_identity(teacher_dir))]
    caches += [EncoderStates(t, run_dir / f"targets-extra{n}" if options.cache else None, device, lambda _: FULL_FRAMES,
                             (), _target_frames(options), identity=f"extra:{name}@{FULL_FRAMES}")
               for n, (name, t) in enumerate(zip(options.extra_teachers, extra, strict=True))]
    processes = Processes.current()
    if options.cache and processes.distributed:  # each process fills its share of the cache, then all read it
        processes.share(chunks, lambda c: [cache.get(c.audio, c.start, c.end, c.key) for cache in caches],
                        "teacher encoder states (30 s)")
    targets = _targets(chunks, caches, quiet=not accelerator.is_main_process)
    encoder, merge = trainable_encoder(encoder, options)
    frozen = max(0, len(encoder.layers) - options.train_top_layers) if options.train_top_layers else 0
    side = StudentSide(encoder, encoder.config.d_model, options.target_layers, [t.config.d_model for t in extra], frozen)
    params = [p for p in side.parameters() if p.requires_grad]
    audio = ClipReader()

    def loss(modules, batch, step, generator):
        return _step_loss(batch, chunks, targets, audio, modules[0], depth, options, generator, device, step)

    fitted = fit(accelerator, [side], params, list(range(len(chunks))),
                 [int((c.end - c.start) // BUCKET_S) for c in chunks], lambda b: b, loss, options, run_dir,
                 "distill encoder", resume)
    step, last = fitted.step, fitted.last
    report = {"steps": step, "chunks": len(chunks), "last": last, "options": asdict(options),
              "policy": asdict(options.policy), "seconds": fitted.seconds}
    if accelerator.is_main_process and fitted.finished:
        from k2d.context import POLICY_FILE
        from k2d_train.store.publish import write_student

        student.model.encoder = merge(accelerator.unwrap_model(fitted.modules[0]).encoder)
        write_student(student, student_dir, out_dir, extra={POLICY_FILE: json.dumps(asdict(options.policy), indent=2)})
        (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _target_frames(options: EncoderDistillOptions):
    """Intermediate-layer targets cover the longest span a batch can ask for: audio + largest margin + the
    batch's 4 s bucket width (the final layer is kept whole: the decoder stage reads all of it)."""
    return lambda samples: mel_frames(samples / 16000 + options.pad_max_s + BUCKET_S + 2) // 2


def _targets(chunks: list[Chunk], caches: list[EncoderStates], quiet: bool) -> list[list[dict]]:
    """Every teacher's states of every chunk (cached on disk: computed once per chunk span)."""
    targets: list[list[dict]] = [[] for _ in caches]
    for chunk in tqdm(chunks, desc="teacher encoder states (30 s)", disable=quiet):
        for cache, bucket in zip(caches, targets, strict=True):
            bucket.append(cache.get(chunk.audio, chunk.start, chunk.end, chunk.key))
    return targets


def trainable_encoder(encoder, options: EncoderDistillOptions):
    """The encoder with only what ``options`` lets short-context adaptation change left trainable, and the
    function that turns the trained module back into a plain WhisperEncoder (LoRA adapters merged)."""
    keep_as_is = lambda module: module  # noqa: E731
    if options.train_top_layers:  # the rest stays the teacher's: fewer parameters to move, cheaper steps
        encoder.requires_grad_(False)
        for layer in list(encoder.layers)[-options.train_top_layers:]:
            layer.requires_grad_(True)
        encoder.layer_norm.requires_grad_(True)
        return encoder, keep_as_is
    if options.adapt == "full":
        return encoder, keep_as_is
    if options.adapt == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=options.lora_rank, lora_alpha=2 * options.lora_rank, lora_dropout=0.0,
                            target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
        wrapped = get_peft_model(encoder, config)  # freezes everything but the adapters
        encoder = wrapped.base_model.model  # the same modules, adapters injected: what encode() walks
    else:
        encoder.requires_grad_(False)
    for module in encoder.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.requires_grad_(True)
    encoder.embed_positions.weight.requires_grad_(True)  # the table the short input is cut from

    def merged(trained):
        if options.adapt != "lora":
            return trained
        from peft.tuners.lora import LoraLayer

        for module in trained.modules():
            if isinstance(module, LoraLayer):
                module.merge()
        return _strip_lora(trained)

    return encoder, merged


def _strip_lora(encoder):
    """Replace every merged LoRA layer by its base Linear: what is saved is a plain WhisperEncoder."""
    from peft.tuners.lora import LoraLayer

    for module in list(encoder.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoraLayer):
                setattr(module, child_name, child.get_base_layer())
    return encoder


def _step_loss(batch: list[int], chunks: list[Chunk], targets: list[list[dict]], audio: ClipReader, side: StudentSide,
               depth: dict[int, int], options: EncoderDistillOptions, generator: torch.Generator, device,
               step: int = 1) -> dict:
    """One batch: the chunks padded with one random margin, the student's states against the targets."""
    from k2d.features import log_mel

    clips = [audio.clip(chunks[i].audio, chunks[i].start, chunks[i].end) for i in batch]
    pad = options.pad_min_s + float(torch.rand(1, generator=generator)) * (options.pad_max_s - options.pad_min_s)
    frames = mel_frames(max(len(c) for c in clips) / 16000 + pad)
    heard = [noisy(c, options, generator) for c in clips]  # the clean clips stay the teacher's
    features = torch.stack([torch.from_numpy(log_mel(c, frames)) for c in heard]).to(device)
    if options.spec_augment:
        features = spec_augment(features, generator)
    full_step = bool(options.full_context_weight) and step % options.full_context_every == 0
    # the teacher's own input on full-context steps: the clips padded to 30 s, every one of the 1,500 target frames
    long = torch.stack([torch.from_numpy(log_mel(c, FULL_FRAMES)) for c in heard]).to(device) if full_step else None
    out = side(features, long)
    final = out["final"]
    span = final.shape[1]

    def gold(bucket: list[dict], name: str, frames: int = span) -> torch.Tensor:
        return torch.stack([bucket[i][name][:frames] for i in batch]).to(device)

    regression = layer_regression(final, gold(targets[0], "final"))
    loss = options.l1_weight * regression["l1"] + options.cos_weight * regression["cos"]
    contrastive = torch.zeros((), device=device)
    if options.contrastive_weight:
        audible = torch.arange(span)[None, :] < torch.tensor([len(c) // (2 * HOP_LENGTH) for c in clips])[:, None]
        contrastive = frame_contrastive(final, gold(targets[0], "final"), options.contrastive_temperature,
                                        generator=generator, mask=audible.to(device))
        loss = loss + options.contrastive_weight * contrastive
    for layer, teacher_layer in depth.items():
        hint = layer_regression(out["hints"][layer], gold(targets[0], f"layer{teacher_layer}"))
        loss = loss + 0.5 * (options.l1_weight * hint["l1"] + options.cos_weight * hint["cos"])
    for n, predicted in enumerate(out["extra"]):
        extra = layer_regression(predicted, gold(targets[n + 1], "final"))
        loss = loss + options.extra_weight * (options.l1_weight * extra["l1"] + options.cos_weight * extra["cos"])
    full = torch.zeros((), device=device)
    if full_step:
        whole = out["whole"]
        term = layer_regression(whole, gold(targets[0], "final", whole.shape[1]))
        full = options.l1_weight * term["l1"] + options.cos_weight * term["cos"]
        loss = loss + options.full_context_weight * full
    return {"loss": loss, "l1": regression["l1"].detach(), "cos": regression["cos"].detach(),
            "contrastive": contrastive.detach(), "full_context": full.detach()}


NOISY = augment.AugmentConfig(tempo=(1.0, 1.0), pitch=(0.0, 0.0), pitch_wobble=0.0, gain_wobble_db=0.0,
                              reverb_p=0.5, lowpass_p=0.2)


def noisy(clip: np.ndarray, options: EncoderDistillOptions, generator: torch.Generator) -> np.ndarray:
    """The clip as the student hears it: with probability ``augment_p`` through a random room and noise at
    an SNR from ``augment_snr_db`` (the same length: the targets' frames stay aligned)."""
    if not options.augment_p or float(torch.rand(1, generator=generator)) >= options.augment_p:
        return clip
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    config = replace(NOISY, snr_db=options.augment_snr_db)
    return augment.apply_channel(clip, augment.draw_condition(rng, config))[: len(clip)].astype(np.float32)
