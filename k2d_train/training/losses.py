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
                      mask: torch.Tensor, weights: LossWeights,
                      teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``{"loss", "ce", "kl"}`` for logits (B, L, V), labels (B, L) and a boolean mask (B, L). The teacher comes
    as its logits (B, L, V) or as cached top-k ``(logprobs, indices)``, each (masked rows, k) in mask order."""
    student = student_logits[mask]
    ce = F.cross_entropy(student.float(), labels[mask])
    if weights.kl == 0 or (teacher_logits is None and teacher_topk is None):
        kl = torch.zeros((), device=ce.device)
    elif teacher_topk is not None:
        kl = topk_kl_divergence(student, *teacher_topk, weights.temperature)
    else:
        kl = kl_divergence(student, teacher_logits[mask], weights.temperature)
    loss = weights.ce * ce + weights.kl * weights.temperature**2 * kl
    return {"loss": loss, "ce": ce.detach(), "kl": kl.detach()}


def topk_kl_divergence(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_indices: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """KL(teacher_T ‖ student_T) over ``k + 1`` bins: the teacher's top ``k`` tokens and the rest of the vocabulary.

    ``teacher_logprobs`` (N, k) are log-softmax values over the *full* vocabulary at temperature T (see
    :mod:`k2d_train.training.teacher_targets`), so the tail's mass ``1 − Σ p`` is exact and the result is the KL of
    the two distributions coarsened to those bins: a lower bound of the full KL that equals it as the tail
    empties, with the same gradient on the top tokens."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    student_top = log_student.gather(-1, teacher_indices)
    teacher_top = teacher_logprobs.float()
    top = (teacher_top.exp() * (teacher_top - student_top)).sum(-1)
    teacher_rest = (1 - teacher_top.exp().sum(-1)).clamp(min=1e-6)
    student_rest = (1 - student_top.exp().sum(-1)).clamp(min=1e-6)
    return (top + teacher_rest * (teacher_rest.log() - student_rest.log())).mean()


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


def rnnt_loss(logits: torch.Tensor, targets: torch.Tensor, frames: torch.Tensor, lengths: torch.Tensor,
              blank: int = 0) -> torch.Tensor:
    """The transducer loss (Graves 2012) in plain torch: −log p(y | x) summed over every alignment, by the
    forward recursion over the (frame t, label u) lattice, one anti-diagonal t + u = d at a time (each step
    is vectorised over u; autograd gives the gradient).

    ``logits`` (B, T, U + 1, V), ``targets`` (B, U) padded, ``frames`` / ``lengths`` each item's real T and U.
    Returns the batch mean of each item's loss divided by its label count, so long and short chunks weigh
    alike."""
    log_probs = logits.float().log_softmax(-1)
    batch, steps, width, _ = log_probs.shape  # width = U + 1
    blank_lp = log_probs[..., blank]  # (B, T, U+1): stay at u, move to t + 1
    index = targets.clamp(min=0)[:, None, :, None].expand(batch, steps, width - 1, 1)
    label_lp = log_probs[:, :, :-1].gather(-1, index).squeeze(-1)  # (B, T, U): emit label u at (t, u), stay at t
    floor = -1e30
    label_lp = F.pad(label_lp, (0, 1), value=floor)  # a column no path reads: the lookup stays in range when U = 0
    u = torch.arange(width, device=logits.device)
    alpha = torch.full((batch, width), floor, device=logits.device)
    alpha[:, 0] = 0.0
    diagonals = [alpha]
    for d in range(1, steps + width - 1):
        t_prev = d - 1 - u  # the cell (t - 1, u) this one is reached from by a blank
        ok_blank = (t_prev >= 0) & (t_prev < steps)
        came_blank = alpha + blank_lp[:, t_prev.clamp(0, steps - 1), u]
        t_here = d - u  # the cell (t, u - 1) this one is reached from by a label
        ok_label = (u > 0) & (t_here >= 0) & (t_here < steps)
        shifted = torch.cat([torch.full((batch, 1), floor, device=logits.device), alpha[:, :-1]], dim=1)
        came_label = shifted + label_lp[:, t_here.clamp(0, steps - 1), (u - 1).clamp(min=0)]
        alpha = torch.logaddexp(torch.where(ok_blank, came_blank, floor), torch.where(ok_label, came_label, floor))
        alpha = torch.where((t_here >= 0) & (t_here < steps), alpha, floor)
        diagonals.append(alpha)
    final = torch.stack([diagonals[int(f) - 1 + int(n)][b, int(n)] + blank_lp[b, int(f) - 1, int(n)]
                         for b, (f, n) in enumerate(zip(frames, lengths, strict=True))])
    return (-final / lengths.clamp(min=1).float()).mean()
