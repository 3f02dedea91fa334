"""Knowledge-distillation losses, shared by distillation and by the fine-tune after pruning: matching the
teacher's outputs (`kd_loss`) and, optionally, its input gradients (`attribution_loss`)."""

from __future__ import annotations

import contextlib
from typing import Annotated

import torch
from pydantic import Field
from torch.nn import functional as F

from trainers.loop import Batch
from trainers.options import Float

# The weight of the input-gradient matching term (`attribution_loss`): 0 is off, the loss unchanged.
AttributionWeight = Annotated[Float, Field(ge=0, le=100)]


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)."""
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean")
    return alpha * temperature ** 2 * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def teacher_logits(teacher, x_train, rows_per_call: int = 1024) -> torch.Tensor:
    """The teacher's logits on every training row, once, for `teacher_loss`'s `cache`: the teacher is in eval
    mode and its training rows do not change, so the logits of each epoch are the same: computed per batch, every
    epoch ran the larger model's forward pass again (on a (3, 500) signal CNN, whose 1/8-width student trains in
    about 0.25 s an epoch, this made no measurable difference; it grows with the teacher's size)."""
    from trainers.loop import rows

    teacher.eval()
    device = next(teacher.parameters()).device
    with torch.no_grad():
        return torch.cat([teacher(rows(x_train, slice(i, i + rows_per_call), device)).float()
                          for i in range(0, len(x_train), rows_per_call)])


def teacher_loss(teacher, temperature: float, alpha: float, logits, batch: Batch, cache: torch.Tensor | None = None):
    """`kd_loss` on the batch; on mixed inputs (if any), the teacher's soft targets only. `cache`: the teacher's
    logits of every training row (`teacher_logits`), looked up by the batch's row indices."""
    n = len(batch.y)
    with torch.no_grad():
        if cache is not None and "index" in batch.extra:
            rest = teacher(batch.x[n:]) if len(batch.x) > n else cache[:0]
            t_logits = torch.cat([cache[batch.extra["index"]], rest.to(cache.dtype)])
        else:
            t_logits = teacher(batch.x)
    loss = kd_loss(logits[:n], t_logits[:n], batch.y, temperature, alpha)
    if "lam" in batch.extra:
        loss = loss + alpha * temperature ** 2 * F.kl_div(
            F.log_softmax(logits[n:] / temperature, dim=1), F.softmax(t_logits[n:] / temperature, dim=1),
            reduction="batchmean")
    return loss


def input_gradients(module, x, y, *, create_graph: bool = False):
    """d logit[y] / d x per sample: the gradient of each sample's true-class logit with respect to its input.

    With `create_graph` the result stays differentiable in the module's weights (double backpropagation), so a
    loss on it can train them; without, it is detached (a teacher's fixed target).
    """
    x = x.detach().requires_grad_(True)
    # cuDNN's recurrent kernels have no second derivative; PyTorch's own RNN code has (only this forward pays)
    no_cudnn = torch.backends.cudnn.flags(enabled=False, deterministic=torch.backends.cudnn.deterministic)
    with torch.enable_grad(), no_cudnn if create_graph else contextlib.nullcontext():
        picked = module(x).gather(1, y.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(picked, x, create_graph=create_graph)
    return grad if create_graph else grad.detach()


def attribution_loss(student, teacher, x, y):
    """Mean over samples of 1 - cos(student's input gradient, teacher's), both of the true-class logit.

    Jacobian matching (Srinivas & Fleuret, "Knowledge Transfer with Jacobian Matching", ICML 2018): the
    student is asked to respond to its input as the teacher does, not only to give its outputs, which is
    what an attribution method reads. Cosine rather than a squared distance, so the term ignores the scale of
    the gradients (a narrower or pruned student's logits need not have the teacher's scale) and lies in [0, 2].
    Zero when the student is the teacher. The teacher should be in eval mode; it draws no random numbers.
    """
    target = input_gradients(teacher, x, y).flatten(1)
    ours = input_gradients(student, x, y, create_graph=True).flatten(1)
    return (1.0 - F.cosine_similarity(ours, target, dim=1, eps=1e-12)).mean()


def with_attribution(loss, student, teacher, weight: float):
    """`loss(logits, batch)` plus `weight` times `attribution_loss` on the batch's original rows.

    The term needs a second forward pass of the student (the loop's logits carry no graph to the inputs) and
    a backward pass through that one twice: about three times the cost of a plain step.
    """
    teacher.eval()

    def combined(logits, batch: Batch):
        n = len(batch.y)
        return loss(logits, batch) + weight * attribution_loss(student, teacher, batch.x[:n], batch.y)

    return combined


def hard_label_loss(logits, batch: Batch):
    """Cross-entropy against the labels (the loop's default loss), for wrapping with `with_attribution`."""
    return F.cross_entropy(logits, batch.y)
