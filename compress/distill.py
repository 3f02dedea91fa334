"""Knowledge distillation (Hinton et al. 2015) from a trained artifact into a smaller student.

The student is trained twice from the same initial weights, with the same
seed, epochs and batches: once alone on the labels, once with the teacher's
softened outputs. Both are measured on the test split, so the report can say
how much of the teacher-student gap distillation closed:
`gap_closed = (distilled - alone) / (teacher - alone)`.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Annotated

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from trainers.artifact import LoadedModel, ModelSpec, accuracy, predict
from trainers.data import DataBundle
from trainers.loop import Batch, LoopOptions, split_tensors, training_loop
from trainers.errors import ToolkitError
from trainers.models import build_model, config_dict, count_parameters, get_family, list_models, make_config
from trainers.options import Bool, Epochs, Float, Fraction, Int, PositiveFloat, PositiveInt, Str

from . import depgraph
from .base import Variant, derive_model, register_method
from .losses import AttributionWeight, kd_loss, teacher_logits, teacher_loss, with_attribution  # noqa: F401  (kd_loss: API)
from .resized import example_rows, module_variant

WidthFactor = Annotated[Float, Field(gt=0, le=1)]
Temperature = Annotated[Float, Field(gt=0, le=100)]
Mixup = Annotated[Float, Field(ge=0, le=10)]
# auto's distillation gives up halfway when the student's best validation accuracy is this many points (plus
# auto's max_drop) below the teacher's. Measured with auto's quick recipe (30 epochs, 1/8 width; 10 cases: MLP,
# CNN and LSTM on digits, signals, features40 and 4,000 waveforms): from epoch 15 to 30 the best validation
# accuracy rose by at most 5.4 points (the waveform LSTM, 55.6 -> 61.0%, 8 of the search's 20 s); the students
# that came within 1 point of the teacher on test were 4.4 points or less behind on validation at epoch 15,
# the five given up by this rule 11-24 points behind, and every one of them ended over 6 points down.
GIVE_UP_POINTS = 10.0


def default_student_config(family: str, teacher: ModelSpec, width_factor: float) -> dict:
    """A narrower net: the teacher's widths times `width_factor` when the family matches, else the family
    default's widths times it."""
    base = dict(teacher.config) if family == teacher.family else config_dict(make_config(family, {}))
    for key in ("hidden", "channels"):
        if key in base:
            base[key] = [max(2, int(round(w * width_factor))) for w in base[key]]
    return base


def train_student(module: nn.Module, data: DataBundle, epochs: int, *, teacher: nn.Module | None = None,
                  temperature: float = 4.0, alpha: float = 0.9, lr: float = 3e-3, batch_size: int = 64,
                  seed: int = 0, mixup: float = 0.0, attribution_weight: float = 0.0,
                  give_up: tuple[float, float] | None = None) -> tuple[nn.Module, dict]:
    """AdamW training with cosine LR, keeping the best weights on validation; with a teacher, the loss is `kd_loss`.

    `give_up` = (teacher's validation accuracy, points): a ToolkitError halfway through when the student's best
    validation accuracy so far is more than `points` below the teacher's.

    `mixup` > 0 also feeds the student convex mixes of pairs of training inputs, Beta(mixup, mixup) weights:
    with a teacher they are labelled by the teacher's soft outputs alone (a larger transfer set, as in
    Hinton et al.); without one, by the same mix of the two hard labels (Zhang et al. 2018), so a student
    trained alone sees exactly the same inputs and only the teacher's targets differ. The teacher draws no
    random numbers, so both runs get the same batches, dropout masks and mixes.

    `attribution_weight` > 0 (with a teacher) adds that weight times `compress.losses.attribution_loss`:
    the student's input gradients matched to the teacher's (Jacobian matching, Srinivas & Fleuret 2018).
    """
    if teacher is not None:
        teacher.eval()
    tensors = split_tensors(data, next(module.parameters()).device, splits=("train", "val"))
    options = LoopOptions(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, schedule="cosine",
                          select="val_accuracy")
    loss = _hard_label_loss if teacher is None else functools.partial(
        teacher_loss, teacher, temperature, alpha, cache=teacher_logits(teacher, tensors["x_train"]))
    if teacher is not None and attribution_weight > 0:
        loss = with_attribution(loss, module, teacher, attribution_weight)
    state = training_loop(module, tensors, options, loss=loss, transform=_mixup(mixup) if mixup > 0 else None,
                          after_epoch=_halfway_check(epochs, *give_up) if give_up and len(data.y_val) else None)
    return module, {"val_accuracy": [row["val_accuracy"] for row in state.history], "best_epoch": state.best_epoch}


def _halfway_check(epochs: int, teacher_accuracy: float, points: float):
    def check(state, row: dict) -> None:
        if row["epoch"] != max(1, epochs // 2):
            return
        best = max(r["val_accuracy"] for r in state.history if "val_accuracy" in r)
        if (teacher_accuracy - best) * 100 > points:
            raise ToolkitError(f"distillation given up at epoch {row['epoch']} of {epochs}: the student's best "
                               f"validation accuracy {best:.4f} is {(teacher_accuracy - best) * 100:.1f} points "
                               f"below the teacher's {teacher_accuracy:.4f}, more than the {points:g} it may recover")
    return check


def _mixup(concentration: float):
    """A batch transform appending, after the batch, mixes of its inputs in pairs with Beta weights."""
    beta = torch.distributions.Beta(concentration, concentration)

    def transform(batch: Batch) -> Batch:
        n = len(batch.y)
        lam = beta.sample((n,)).to(batch.x.device, batch.x.dtype)
        perm = torch.randperm(n, device=batch.x.device)
        weight = lam.view((n,) + (1,) * (batch.x.dim() - 1))
        mixed = weight * batch.x + (1 - weight) * batch.x[perm]
        return Batch(torch.cat([batch.x, mixed]), batch.y, {**batch.extra, "lam": lam, "perm": perm})

    return transform


def _hard_label_loss(logits, batch: Batch):
    """Cross-entropy on the batch; on mixed inputs (if any), the same mix of the two hard labels."""
    n = len(batch.y)
    loss = F.cross_entropy(logits[:n], batch.y)
    if "lam" in batch.extra:
        lam, mixed = batch.extra["lam"], logits[n:]
        loss = loss + (lam * F.cross_entropy(mixed, batch.y, reduction="none")
                       + (1 - lam) * F.cross_entropy(mixed, batch.y[batch.extra["perm"]], reduction="none")).mean()
    return loss


def _auto_distill(family: str, settings: dict) -> list[dict]:
    """What auto tries: the smallest quick student, 1/8 width, a short plain Hinton run of its `distill_epochs`
    (0: none); the patient default recipe takes 150 epochs on twice the samples. Without the student trained
    alone for comparison: auto judges the distilled student only, and the second run doubled its time. Given up
    halfway when it is far behind (`GIVE_UP_POINTS`)."""
    if not settings["distill_epochs"]:
        return []
    return [{"epochs": settings["distill_epochs"], "width_factor": 0.125, "mixup": 0.0, "temperature": 4.0,
             "alpha": 0.9, "alone": False, "give_up": GIVE_UP_POINTS + settings["max_drop"]}]


@register_method("distill", role="transform", auto=_auto_distill, chain=True, needs=("torch",))
def distill(model: LoadedModel, data: DataBundle, student: Str | nn.Module | None = None,
            student_config: dict | None = None, width_factor: WidthFactor = 0.25, epochs: Epochs = 150,
            temperature: Temperature = 2.0, alpha: Fraction = 0.7, lr: PositiveFloat = 3e-3,
            batch_size: PositiveInt = 64, mixup: Mixup = 1.0, seed: Int = 0,
            attribution_weight: AttributionWeight = 0.0, alone: Bool = True, give_up: PositiveFloat | None = None) -> list[Variant]:
    """Hinton knowledge distillation into a smaller student, reported beside the student trained alone.

    Options:
        student: the student: a model family name, or an `nn.Module` of your own (it must take the teacher's
            inputs and give its output shape); default: the teacher's own architecture made narrower
            (a built-in family: its widths times `width_factor`; any other module: `depgraph.narrower_copy`,
            its hidden units pruned to `width_factor` on the dependency graph and re-initialised).
        student_config: the student family's architecture (e.g. {"hidden": [32]}); default: the teacher's
            widths times `width_factor`.
        epochs, lr, batch_size, seed: student training (identical for the distilled and the alone run).
        temperature: softmax temperature T (> 0); alpha: weight of the soft loss, in [0, 1].
        mixup: Beta(mixup, mixup) input mixing for extra teacher-labelled samples (0 = off).
        attribution_weight: weight of a term matching the distilled student's input gradients (true-class
            logit) to the teacher's, 1 - cosine per sample (Jacobian matching, Srinivas & Fleuret, ICML 2018),
            so the student's attributions stay closer to the teacher's; 0 = off. About 3x the training time.
        alone: also train the same student alone (same start, seed and epochs) to report how much of the gap
            distillation closed; off, the distilled student only, in half the time (auto turns it off).
        give_up: stop with an error halfway through when the distilled student's best validation accuracy is
            more than this many points below the teacher's (None: never; auto: 10 points plus its max_drop).

    The defaults are a "patient and consistent" teacher (Beyer et al. 2022): long training, the student
    matching the teacher on mixed inputs too, T=2, a quarter of the teacher's widths; the student alone gets
    the same mixed inputs with mixed labels. Measured (benchmarks/prune_distill.py, 5 seeds): where the
    teacher knows more than the student can learn alone (CNN on the signals of compress_vs_peers) the
    distilled student closes most of the gap; on digits the student alone already matches the teacher and
    distillation only pulls it towards the teacher's mistakes. Hinton's T=4, alpha=0.9 over 60 epochs
    without mixup lowered the accuracy of small digits CNN and LSTM students in our runs.
    """
    initial, family, arch, notes = _student(model, data, student, student_config, width_factor, seed)
    options = dict(lr=lr, batch_size=batch_size, seed=seed, temperature=temperature, alpha=alpha)
    teacher_val = accuracy(model.module, data.x_val, data.y_val) if give_up and len(data.y_val) else None
    distilled, history = train_student(copy.deepcopy(initial), data, epochs, teacher=model.module, mixup=mixup,
                                       attribution_weight=attribution_weight, **options,
                                       give_up=(teacher_val, give_up) if teacher_val is not None else None)
    teacher_acc = accuracy(model.module, data.x_test, data.y_test)
    distilled_acc = accuracy(distilled, data.x_test, data.y_test)
    alone_acc = gap_closed = None
    if alone:
        alone_model, _ = train_student(copy.deepcopy(initial), data, epochs, mixup=mixup, **options)
        alone_acc = accuracy(alone_model, data.x_test, data.y_test)
        gap = teacher_acc - alone_acc
        gap_closed = (distilled_acc - alone_acc) / gap if gap > 0 else None
    agreement = float((predict(distilled, data.x_test).argmax(1) == predict(model.module, data.x_test).argmax(1)).mean())
    recipe = {"method": "distill", "student": family, "student_config": arch, "epochs": epochs,
              "temperature": temperature, "alpha": alpha, "lr": lr, "batch_size": batch_size, "mixup": mixup,
              "seed": seed, "teacher_accuracy": teacher_acc, "student_alone_accuracy": alone_acc,
              "distilled_accuracy": distilled_acc, "gap_closed": gap_closed, "teacher_agreement": agreement}
    if attribution_weight > 0:
        recipe["attribution_weight"] = attribution_weight
    if alone_acc is None:
        summary = f"distilled {distilled_acc:.4f}, teacher {teacher_acc:.4f} (test); the student was not trained alone"
    else:
        summary = (f"student alone {alone_acc:.4f}, distilled {distilled_acc:.4f}, teacher {teacher_acc:.4f} (test)"
                   + (f": {gap_closed:.0%} of the gap closed" if gap_closed is not None
                      else ": the student alone is not worse than the teacher"))
    notes = [summary, *notes]
    better_alone = alone_acc is not None and alone_acc > distilled_acc
    measurements = {k: recipe[k] for k in ("teacher_accuracy", "student_alone_accuracy", "distilled_accuracy", "gap_closed")}
    if family in list_models():
        if better_alone:
            notes.append("the student trained alone is more accurate than the distilled one: the teacher did not help "
                         f"here (`toolkit train --model {family} --arch '{json.dumps(arch)}'` trains that student)")
        variant_model = derive_model(model, distilled, recipe, family=family, config=arch, runtime="torch",
                                     dtype="float32", weights={"file": "model.safetensors", "codec": "dense"}, onnx=None)
        name = f"distill-{family}-" + "-".join(str(w) for w in arch.get("channels", []) + arch.get("hidden", []))
        return [Variant(name=name, model=variant_model, recipe=recipe, measurements=measurements, notes=notes)]
    if better_alone:
        notes.append("the student trained alone is more accurate than the distilled one: the teacher did not help here")
    variant = module_variant(model, distilled, recipe, f"distill-{family}-{count_parameters(distilled)}", notes, data)
    variant.measurements = measurements
    return [variant]


def _student(model: LoadedModel, data: DataBundle, student, student_config, width_factor: float, seed: int):
    """The untrained student, its family (a registered one, "narrower" or "module") and its architecture (a
    family config; for a module, its layer widths), and notes."""
    if isinstance(student, nn.Module):
        _check_student(model, student, data)
        return copy.deepcopy(student), "module", {"widths": depgraph.widths(student)}, []
    family = student or model.spec.family
    if family in list_models() and (student is not None or family in _BUILT_IN_STUDENTS):
        arch = config_dict(make_config(family, student_config if student_config is not None
                                       else default_student_config(family, model.spec, width_factor)))
        pre = model.spec.preprocessing
        torch.manual_seed(seed)
        initial = build_model(family, arch, model.spec.input_shape, model.spec.num_classes, pre.get("mean"), pre.get("std"))
        return initial, family, arch, _larger(initial, model.module)
    if student is not None:
        get_family(family)  # an unknown student family: one clear line
    if student_config is not None:
        raise ToolkitError("student_config describes a model family's student; this model is not one: pass "
                           "student=<your nn.Module> or width_factor")
    device = next(model.module.parameters()).device
    initial, report = depgraph.narrower_copy(model.module, example_rows(data, device), width_factor, seed=seed)
    if width_factor < 1 and count_parameters(initial) >= count_parameters(model.module):
        # A student as large as its teacher (an embedding and one linear head: nothing hidden to narrow) would
        # be a retrained copy sold as a smaller model.
        why = "; ".join(report.notes()) or "it has no hidden units to narrow"
        raise ToolkitError(f"distillation found no unit of this module it can narrow for a smaller student ({why}); "
                           "pass student=<a smaller nn.Module>")
    return initial, "narrower", {"widths": report.widths_after or depgraph.widths(initial)}, report.notes()


def _larger(student: nn.Module, teacher: nn.Module) -> list[str]:
    """A note where a `student_config` asks for a student as large as its teacher or larger: distillation is
    sold as a smaller model, and the size column alone read "0.17x smaller" for one 5.9x larger."""
    mine, theirs = count_parameters(student), count_parameters(teacher)
    if mine < theirs:
        return []
    return [f"the student is {mine / theirs:.1f}x larger than its teacher ({mine:,} parameters against {theirs:,}): "
            "not a smaller model"]


_BUILT_IN_STUDENTS = ("mlp", "cnn", "lstm")  # families whose config lists every width (default_student_config)


def _check_student(model: LoadedModel, student: nn.Module, data: DataBundle) -> None:
    """A student module must take the teacher's inputs and give its output shape: else one line."""
    x = example_rows(data, next(model.module.parameters()).device)[:2]
    with torch.no_grad():
        expected = tuple(model.module.eval()(x).shape)
        try:
            was = student.training
            got = tuple(student.eval().to(x.device)(x).shape)
            student.train(was)
        except Exception as exc:  # the user's forward: any failure is a bad student
            raise ToolkitError(f"the student module cannot run on inputs of shape {tuple(x.shape[1:])}: "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if got != expected:
        raise ToolkitError(f"the student module gives outputs of shape {got[1:]} per sample, the teacher {expected[1:]}")
