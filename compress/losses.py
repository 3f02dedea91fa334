"""Knowledge-distillation losses, shared by distillation and by the fine-tune after pruning."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from trainers.loop import Batch


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)."""
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean")
    return alpha * temperature ** 2 * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def teacher_loss(teacher, temperature: float, alpha: float, logits, batch: Batch):
    """`kd_loss` on the batch; on mixed inputs (if any), the teacher's soft targets only."""
    n = len(batch.y)
    with torch.no_grad():
        t_logits = teacher(batch.x)
    loss = kd_loss(logits[:n], t_logits[:n], batch.y, temperature, alpha)
    if "lam" in batch.extra:
        loss = loss + alpha * temperature ** 2 * F.kl_div(
            F.log_softmax(logits[n:] / temperature, dim=1), F.softmax(t_logits[n:] / temperature, dim=1),
            reduction="batchmean")
    return loss
