"""Distillation losses: β·CE(pseudo labels) + γ·T²·KL(teacher_T ‖ student_T) over real tokens.

The T² factor keeps the KL gradient's scale independent of the temperature (Hinton et al.);
padding and prompt positions are masked so short labels do not dilute the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    ce: float = 0.8
    kl: float = 1.0
    temperature: float = 2.0


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of KL(softmax(t/T) ‖ softmax(s/T)); rows are already masked to real tokens."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                      mask: torch.Tensor, weights: LossWeights) -> dict[str, torch.Tensor]:
    """``{"loss", "ce", "kl"}`` for logits (B, L, V), labels (B, L) and a boolean mask (B, L)."""
    student = student_logits[mask]
    ce = F.cross_entropy(student.float(), labels[mask])
    if teacher_logits is None or weights.kl == 0:
        kl = torch.zeros((), device=ce.device)
    else:
        kl = kl_divergence(student, teacher_logits[mask], weights.temperature)
    loss = weights.ce * ce + weights.kl * weights.temperature**2 * kl
    return {"loss": loss, "ce": ce.detach(), "kl": kl.detach()}


def layer_regression(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """DistilHuBERT's layer-wise loss: L1 plus -log σ(cosine) per frame (Wang et al. 2022 keep both)."""
    l1 = (predicted.float() - target.float()).abs().mean()
    cosine = F.cosine_similarity(predicted.float(), target.float(), dim=-1)
    return {"l1": l1, "cos": -F.logsigmoid(cosine).mean()}


def frame_contrastive(predicted: torch.Tensor, target: torch.Tensor, temperature: float = 0.1,
                      max_frames: int = 256, generator: torch.Generator | None = None,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """The discriminative term: each predicted frame must pick its own target among other frames'
    (InfoNCE). Regression alone lets a student blur neighbouring frames into an average; the
    decoder's cross-attention needs them distinguishable. ``mask`` (B, T) keeps the frames that hold
    audio: frames of padding all look alike, and asking to tell them apart only adds noise."""
    width = predicted.shape[-1]
    pred, gold = predicted.float().reshape(-1, width), target.float().reshape(-1, width)
    if mask is not None:
        pred, gold = pred[mask.reshape(-1)], gold[mask.reshape(-1)]
    pred, gold = F.normalize(pred, dim=-1), F.normalize(gold, dim=-1)
    if pred.shape[0] > max_frames:
        pick = torch.randperm(pred.shape[0], generator=generator)[:max_frames].to(pred.device)
        pred, gold = pred[pick], gold[pick]
    logits = pred @ gold.T / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))
