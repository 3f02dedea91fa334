"""Pruning: structured (physically smaller layers), unstructured (sparse storage) and a sensitivity scan.

Structured pruning removes whole hidden units (neurons, conv channels, recurrent units) of any PyTorch
module through `compress.depgraph`, Torch-Pruning's dependency graph plus a checked pruner for LSTM/GRU/RNN
layers: the toolkit's own families and a user's module go through the same code. A built-in family's new
widths go into the spec's config, so `trainers.load_model` rebuilds the smaller architecture exactly; any
other module changes widths its own class does not have, so its pruned variant is saved as ONNX.

Unstructured pruning uses `torch.nn.utils.prune.global_unstructured` for the
global magnitude mask and the fine-tune (the mask stays fixed through the
re-parametrisation), then stores the weights with the `sparse` or
`sparse-int8` codec (`trainers.codecs`) so the file really shrinks.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Annotated, Literal, get_args

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from pydantic import Field, Strict

from trainers.artifact import LoadedModel, accuracy
from trainers.codecs import CODEBOOK_SIZE, quantize_int8
from trainers.data import DataBundle
from trainers.errors import ToolkitError
from trainers.loop import LoopOptions, split_tensors, training_loop
from trainers.options import Bool, EpochsOrNone, Int, PositiveFloat, PositiveInt, Ratio, validated

from . import depgraph
from .base import Variant, check_source, derive_model, register_method
from .losses import AttributionWeight, hard_label_loss, teacher_logits, teacher_loss, with_attribution
from .resized import example_rows, module_variant

Criterion = Literal["l1", "l2"]
Allocation = Literal["global", "uniform"]
CRITERIA, ALLOCATIONS = get_args(Criterion), get_args(Allocation)
# Measured on digits at 50% (benchmarks/prune_distill.py): for an MLP, global allocation gets past the
# 2.95x size limit of halving every layer; for a CNN it sends the conv channels, which feed the flattened
# dense layer and so free the most parameters, to the floor and costs accuracy, while uniform keeps it.
DEFAULT_ALLOCATION = {"mlp": "global", "cnn": "uniform", "lstm": "uniform"}  # any other model: uniform
# Measured with benchmarks/prune_finetune.py (digits, 50%, 10 fine-tune epochs, 5 seeds; docs/results.md): the
# L2 norm of each unit's dependency group kept more accuracy than L1 on the MLP (96.39 against 96.11%) and the
# LSTM (97.22 / 96.72%) and tied on the CNN (96.50 / 96.72%, within one test sample per seed); distilling from
# the unpruned model during the fine-tune cost accuracy on every family (MLP -1.0, LSTM -1.3 points, CNN none)
# and on a residual 1-D CNN and a 2-layer GRU given as bare modules (-0.9, -0.6 points over 3 seeds): off.
DEFAULT_CRITERION = "l2"
DEFAULT_TEACHER = {"mlp": False, "cnn": False, "lstm": False}  # any other model: False


def percent(ratio: float) -> str:
    """A pruning ratio as the percentage in a variant's name: 30 for 0.3, 99.9 for 0.999 (not 100: the variant
    keeps weights), 12.5 for 0.125."""
    return f"{ratio * 100:.3g}"


def prune_model(model: LoadedModel, data: DataBundle, ratio: float, criterion: str = DEFAULT_CRITERION,
                allocation: str = "uniform", keep_layers: tuple[str, ...] = (), align: int = depgraph.ALIGN
                ) -> tuple[nn.Module, depgraph.PruneReport]:
    """A pruned copy of `model.module` (no fine-tune) and what was pruned (`depgraph.prune_module`)."""
    module = copy.deepcopy(model.module)
    device = next(module.parameters()).device
    report = depgraph.prune_module(module, example_rows(data, device), ratio, importance=criterion,
                                   allocation=allocation, keep_layers=keep_layers, align=align)
    return module.eval(), report


# ---------------------------------------------------------------- fine-tuning

def finetune(module: nn.Module, data: DataBundle, epochs: int, *, lr: float = 1e-3, batch_size: int = 64,
             seed: int = 0, teacher: nn.Module | None = None, temperature: float = 2.0,
             alpha: float = 0.7, attribution_teacher: nn.Module | None = None,
             attribution_weight: float = 0.0) -> tuple[nn.Module, dict]:
    """Short AdamW fine-tune on the training split; keeps the best weights on validation accuracy, the
    starting weights (epoch 0) included, so fine-tuning never returns a worse model than it was given.

    With a `teacher` (the unpruned model), the loss is the distillation loss against its outputs
    (`compress.losses.kd_loss` with `temperature` and `alpha`) instead of the labels alone. With an
    `attribution_teacher` and `attribution_weight` > 0, `compress.losses.attribution_loss` against it is added
    (input-gradient matching, Srinivas & Fleuret 2018), whichever the output loss.
    """
    tensors = split_tensors(data, next(module.parameters()).device, splits=("train", "val"))
    options = LoopOptions(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, select="val_accuracy",
                          score_start=True)
    loss = None
    if teacher is not None:
        teacher.eval()
        loss = functools.partial(teacher_loss, teacher, temperature, alpha,
                                 cache=teacher_logits(teacher, tensors["x_train"]))
    if attribution_teacher is not None and attribution_weight > 0:
        loss = with_attribution(loss or hard_label_loss, module, attribution_teacher, attribution_weight)
    state = training_loop(module, tensors, options, loss=loss)
    return module, {"val_accuracy": [row["val_accuracy"] for row in state.history], "best_epoch": state.best_epoch}


# ---------------------------------------------------------------- methods

def _auto_structured(family: str, settings: dict) -> list[dict]:
    """What auto tries: each of its `prune_ratios` with the family's default split of the pruned units, and the
    uniform split as well where the default differs (an MLP: the global split is smaller, the uniform one
    sometimes keeps more accuracy; measure both).

    Each step has fallbacks (the method's `fallback` options), made only when the steps before them fail the
    fidelity rule:
    - `teacher`: the other fine-tune, with the unpruned model as teacher where the default is the labels.
      Distillation trades a little accuracy for agreement with the original, and auto's rule asks for both.
      Measured on a user's 2-layer GRU (signals, 50% of the units, 10 epochs, 3 seeds): agreement 95.6-96.6%
      with the teacher, 94.7-95.3% without, accuracy 0.0 points down with it, 0.3-0.9 without; on the built-in
      1-D CNN (signals, 30%): 95.3% on the labels, under the rule's 95.4%, 97.2% with the teacher.
    - `align=1`: the exact widths instead of multiples of 8, a different set of kept units. On a user's
      residual 1-D CNN (30%, teacher, 3 seeds) 22/44 channels kept the rule 3 times, 24/48 channels none
      (0.94 points down twice, 95.3% agreement once). Not for the LSTM family, whose only other prunable
      layer is the output layer: its widths are the same either way.
    """
    allocations = sorted({DEFAULT_ALLOCATION.get(family, "uniform"), "uniform"})
    steps = [{"ratio": ratio, "finetune_epochs": settings["finetune_epochs"], "allocation": allocation}
             for ratio in settings["prune_ratios"] for allocation in allocations]
    other = {"teacher": not DEFAULT_TEACHER.get(family, False)}
    fallbacks = [{}, other] + ([] if family == "lstm" else [{"align": 1}, {"align": 1, **other}])
    return [{**step, **extra} for step in steps for extra in fallbacks]


def _auto_unstructured(family: str, settings: dict) -> list[dict]:
    """What auto tries: its `unstructured_ratio` (0: none), stored sparse int8, half its fine-tune epochs."""
    if not settings["unstructured_ratio"]:
        return []
    return [{"ratio": settings["unstructured_ratio"], "finetune_epochs": max(1, settings["finetune_epochs"] // 2),
             "int8": True}]


def _refuse_factorized(model: LoadedModel) -> None:
    """A factorized model (`lowrank`) is refused: pruning took its rank bottlenecks for hidden units (a digits
    MLP's ranks 16 and 8 cut to 4 and 2, 35 points lost). Pruning first and factorizing after keeps both."""
    from trainers.models import low_ranks

    ranks = low_ranks(model.module) if isinstance(model.module, nn.Module) else {}
    if ranks:
        shown = ", ".join(f"{name} (rank {rank})" for name, rank in ranks.items())
        raise ToolkitError(f"structured pruning of a factorized model would cut its rank bottlenecks ({shown}): "
                           "prune the model it was factorized from, then factorize the pruned one")


@register_method("prune-structured", role="transform", auto=_auto_structured, chain=True, needs=("torch",),
                 fallback=("teacher", "align"))
def structured_prune(model: LoadedModel, data: DataBundle, ratio: Ratio = 0.5, finetune_epochs: EpochsOrNone = 10,
                     criterion: Criterion = DEFAULT_CRITERION, allocation: Allocation | None = None,
                     teacher: Bool | None = None, lr: PositiveFloat = 1e-3, seed: Int = 0,
                     attribution_weight: AttributionWeight = 0.0, align: PositiveInt = depgraph.ALIGN) -> list[Variant]:
    """Structured pruning: physically remove the least important units of any PyTorch model, then fine-tune.

    Options:
        ratio: fraction of the hidden units (neurons, channels, recurrent units) removed, in (0, 1).
        allocation: "global" ranks units across layers (each keeps at least a quarter); "uniform" removes
            `ratio` of every layer; default: DEFAULT_ALLOCATION for the family (global for MLPs, else uniform).
        finetune_epochs: AdamW epochs after pruning (best on validation kept; 0 = none).
        criterion: "l1" or "l2" norm of each unit's weights over its dependency group.
        teacher: distil from the unpruned model during the fine-tune; default: DEFAULT_TEACHER for the family.
        attribution_weight: weight of a fine-tune term matching the pruned model's input gradients (true-class
            logit) to the unpruned model's, 1 - cosine per sample (Jacobian matching, Srinivas & Fleuret,
            ICML 2018), with or without `teacher`; 0 = off. About 3x the fine-tune time.
        align: a Linear or convolution layer keeping 2 x `align` units or more keeps a multiple of `align`
            (ONNX Runtime runs ragged widths slower: `compress.depgraph.aligned`); 1 = the exact ratio.

    Layers that cannot be pruned safely (the output layer, a layer feeding a reshape the dependency graph
    cannot follow) stay as they are and are named in the notes.
    """
    family = model.spec.family
    _refuse_factorized(model)
    allocation = DEFAULT_ALLOCATION.get(family, "uniform") if allocation is None else allocation
    teacher = DEFAULT_TEACHER.get(family, False) if teacher is None else teacher
    module, report = prune_model(model, data, ratio, criterion, allocation, align=align)
    if report.parameters_after >= report.parameters_before:
        raise ToolkitError(f"structured pruning found no unit it can remove safely: {'; '.join(report.notes())}")
    before = accuracy(module, data.x_val, data.y_val)
    module, history = finetune(module, data, finetune_epochs, lr=lr, seed=seed,
                               teacher=model.module if teacher else None,
                               attribution_teacher=model.module, attribution_weight=attribution_weight)
    recipe = {"method": "prune-structured", "ratio": ratio, "finetune_epochs": finetune_epochs, "criterion": criterion,
              "allocation": allocation, "teacher": teacher, "lr": lr, "seed": seed, "align": align,
              "widths_before": report.widths_before, "widths_after": report.widths_after,
              "parameters": [report.parameters_before, report.parameters_after], "unpruned": report.unpruned}
    if attribution_weight > 0:
        recipe["attribution_weight"] = attribution_weight
    notes = [f"validation accuracy {before:.4f} right after pruning, {max(history['val_accuracy']):.4f} after "
             f"fine-tuning" + (" with the unpruned model as teacher" if teacher else ""), *report.notes()]
    name = f"prune-structured-{percent(ratio)}"
    if allocation != DEFAULT_ALLOCATION.get(family, "uniform"):
        name += f"-{allocation}"
    if teacher != DEFAULT_TEACHER.get(family, False):
        name += "-teacher" if teacher else "-labels"
    if align != depgraph.ALIGN:
        name += "-exact" if align == 1 else f"-align{align}"
    return [module_variant(model, module, recipe, name, notes, data)]


def _prunable_weights(module: nn.Module) -> list[tuple[nn.Module, str]]:
    # MultiheadAttention reads its out_proj's weight without calling that Linear, so a mask's pre-hook would
    # never recompute it (the fine-tune's second step fails): left dense, as its in_proj_weight is
    inside_attention = {id(m.out_proj) for m in module.modules() if isinstance(m, nn.MultiheadAttention)}
    params = []
    for m in module.modules():
        if id(m) in inside_attention:
            continue
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            params.append((m, "weight"))
        elif isinstance(m, nn.LSTM):
            params += [(m, n) for n, _ in m.named_parameters() if n.startswith("weight_")]
    return params


@register_method("prune-unstructured", role="transform", auto=_auto_unstructured, needs=("torch",), keeps_speed=True)
def unstructured_prune(model: LoadedModel, data: DataBundle, ratio: Ratio = 0.9, finetune_epochs: EpochsOrNone = 10,
                       int8: Bool = False, share_weights: Bool = False, steps: Annotated[int, Strict(), Field(ge=1, le=10)] = 1,
                       clusters: Annotated[int, Strict(), Field(ge=2, le=CODEBOOK_SIZE)] = CODEBOOK_SIZE,
                       teacher: Bool = False, lr: PositiveFloat = 1e-3, seed: Int = 0) -> list[Variant]:
    """Global unstructured magnitude pruning with a fixed mask, fine-tuned, stored sparse.

    Options:
        ratio: fraction of all weights (Linear, Conv, LSTM matrices) set to zero, in (0, 1).
        finetune_epochs: AdamW epochs with the mask kept fixed (and as many again for the shared centroids).
        int8: also quantize the surviving weights to int8 (per-tensor scale) and store them
            with the `sparse-int8` codec (Deep Compression style); default: `sparse` (fp32 values).
        share_weights: instead of int8, cluster each layer's surviving weights and its biases onto `clusters`
            k-means centroids (Deep Compression's weight sharing, `compress.share`), fine-tune the centroids
            (not an LSTM's: its fused weights cannot be parametrized; the notes say so), and store 4-bit indices
            with the `sparse-codebook` codec.
        clusters: centroids per tensor with share_weights (at most 16: the indices are 4-bit).
        steps: reach `ratio` in this many prune + fine-tune rounds, the surviving share shrinking by the same
            factor each round (0.9 in 3: 0.54, 0.78, 0.9), as Deep Compression's iterative pruning. On the digits
            MLP (3 seeds) one step lost up to 1.9 points at 90%, three steps at most 0.3.
        teacher: every fine-tune (each round's and the centroids') distils from the model given, instead of
            learning from the labels alone.
    """
    if int8 and share_weights:
        raise ToolkitError("compression method 'prune-unstructured': int8 and share_weights are two ways to store "
                           "the surviving weights; choose one")
    module = copy.deepcopy(model.module)
    params = _prunable_weights(module)
    history = {"val_accuracy": []}
    tune = functools.partial(finetune, lr=lr, seed=seed,
                             teacher=copy.deepcopy(model.module).eval() if teacher else None)
    for step in range(1, steps + 1):
        # the zeros of earlier rounds are the smallest magnitudes, so each round's global mask keeps them
        target = 1.0 - (1.0 - ratio) ** (step / steps)
        torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=target)
        module, round_history = tune(module, data, finetune_epochs)
        history["val_accuracy"] += round_history["val_accuracy"]
        for m, name in params:
            torch_prune.remove(m, name)
    codec = "sparse-codebook" if share_weights else "sparse-int8" if int8 else "sparse"
    if int8:  # the in-memory module holds exactly what the file will decode to
        with torch.no_grad():
            for m, name in params:
                q, scale = quantize_int8(getattr(m, name).detach())
                getattr(m, name).copy_(q.float() * scale)
    if share_weights:
        shared_history = _share_and_finetune(module, model.spec.family, params, data, clusters, finetune_epochs, tune,
                                             seed)
        history["val_accuracy"] += shared_history
    total = sum(getattr(m, n).numel() for m, n in params)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in params)
    recipe = {"method": "prune-unstructured", "ratio": ratio, "finetune_epochs": finetune_epochs, "int8": int8,
              "codec": codec, "lr": lr, "seed": seed, "sparsity": round(zeros / total, 4), "teacher": teacher}
    if share_weights:
        recipe.update(share_weights=True, clusters=clusters)
    if steps > 1:  # `rounds`, not `steps`: a chain's recipe holds its list of step recipes under `steps`
        recipe.update(rounds=steps)
    pruned = derive_model(model, module.eval(), recipe, weights={**model.spec.weights, "codec": codec})
    name = f"prune-unstructured-{percent(ratio)}" + ("-int8" if int8 else "") + ("-shared" if share_weights else "")
    name += "-teacher" if teacher else ""
    notes = [f"{zeros}/{total} weights are zero; best validation accuracy {max(history['val_accuracy']):.4f}"]
    if share_weights and not shared_history:  # an LSTM: that best is from before sharing, which the notes must say
        notes[0] += " before sharing"
        notes.append(f"centroids not fine-tuned (an LSTM's fused weights cannot be parametrized): validation "
                     f"accuracy {accuracy(module, data.x_val, data.y_val):.4f} after sharing")
    if share_weights:
        notes.append(f"weights and biases share at most {clusters} values per tensor (4-bit indices; in a tensor "
                     f"under half zeros, stored dense, the zero is one of its 16 codes)")
    return [Variant(name=name, model=pruned, recipe=recipe, notes=notes)]


def _share_and_finetune(module: nn.Module, family: str, params, data: DataBundle, clusters: int, epochs: int,
                        tune: Callable, seed: int) -> list[float]:
    """Cluster the pruned weights and the biases, fine-tune the centroids (not for LSTMs: their fused weights
    cannot be parametrized), and leave plain parameters holding the shared values."""
    from .share import share, unshare

    biases = [(m, "bias") for m in module.modules()
              if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.bias is not None]
    targets = [*params, *biases]
    if family == "lstm":
        share(targets, clusters, seed)
        unshare(targets)
        return []
    share(targets, clusters, seed)
    try:
        module, history = tune(module, data, epochs)
    finally:
        unshare(targets)
    return history["val_accuracy"]


def _sensitivity_scan(model: LoadedModel, data: DataBundle, ratios: tuple[Ratio, ...] = (0.25, 0.5, 0.75),
                      criterion: Criterion = DEFAULT_CRITERION, split: Literal["val", "test"] = "val") -> list[dict]:
    """Accuracy after structurally pruning each layer alone at each ratio, without fine-tuning.

    Returns plain rows for the report: {"layer", "width", "ratio", "kept", "accuracy", "baseline_accuracy", "split"}.
    """
    check_source(model, "sensitivity_scan")
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    baseline = accuracy(model.module, x, y)
    layers = depgraph.widths(model.module)
    rows = []
    for layer, units in layers.items():
        for ratio in ratios:
            others = tuple(n for n in layers if n != layer)
            pruned, report = prune_model(model, data, ratio, criterion, keep_layers=others)
            if layer in report.unpruned:
                break
            rows.append({"layer": layer, "width": units, "ratio": ratio, "kept": report.widths_after[layer],
                         "accuracy": accuracy(pruned, x, y), "baseline_accuracy": baseline, "split": split})
    return rows


sensitivity_scan = validated(_sensitivity_scan, "sensitivity_scan:")
