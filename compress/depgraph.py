"""Structured pruning of any PyTorch module on Torch-Pruning's dependency graph.

`prune_module` removes the least important hidden units of a module in place and says what it did:
Linear and Conv1d/Conv2d outputs with everything that must shrink with them (BatchNorm, LayerNorm, a
custom layer's per-channel parameter, residual additions, concatenations, the flattened input of the next
dense layer) are found by Torch-Pruning's DependencyGraph (DepGraph, Fang et al. 2023), the field's
library for exactly this. The output layer is never pruned (the class count stays), and a layer whose
pruning breaks the forward pass (a reshape to a fixed size that the graph cannot follow, for instance) is
left as it is and named in `PruneReport.unpruned`, never a crash.

Recurrent layers (nn.LSTM, nn.GRU, nn.RNN) go through `compress.recurrent.RecurrentPruner` first (see
there why not through Torch-Pruning), and Torch-Pruning then leaves them alone.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from trainers.errors import ToolkitError

from .recurrent import RECURRENT, RecurrentPruner

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, *RECURRENT)
IMPORTANCES = ("l1", "l2")
ALLOCATIONS = ("global", "uniform")
MIN_KEEP = 0.25  # the smallest fraction of a layer that global allocation keeps
ALIGN = 8  # kept widths of Linear/conv layers: multiples of this (see `aligned`)


@dataclass
class PruneReport:
    """What `prune_module` did: widths per prunable layer before and after, and the layers left alone and why."""

    widths_before: dict[str, int]
    widths_after: dict[str, int] = field(default_factory=dict)
    unpruned: dict[str, str] = field(default_factory=dict)
    parameters_before: int = 0
    parameters_after: int = 0

    def notes(self) -> list[str]:
        """Plain-language notes: one line naming the layers left as they are, with their reasons."""
        if not self.unpruned:
            return []
        return ["left unpruned: " + "; ".join(f"{name} ({why})" for name, why in self.unpruned.items())]


def width(module: nn.Module) -> int:
    """The number of output units of a prunable layer."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, RECURRENT):
        return module.hidden_size
    return module.out_channels


def widths(module: nn.Module) -> dict[str, int]:
    return {name: width(m) for name, m in module.named_modules() if isinstance(m, PRUNABLE)}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prune_module(module: nn.Module, example: torch.Tensor, ratio: float, *, importance: str = "l2",
                 allocation: str = "uniform", keep_layers: tuple[str, ...] = (), align: int = ALIGN) -> PruneReport:
    """Remove `ratio` of the hidden units of `module`, in place; the output shape stays the same.

    Args:
        module: any module whose forward takes one tensor (in eval mode for tracing; its mode is restored).
        example: a small batch of real inputs (tracing, and the checks that the pruned module still runs).
        ratio: the fraction of hidden units removed, in (0, 1).
        importance: "l1" or "l2": the norm of each unit's weights over its whole dependency group
            (Torch-Pruning's GroupMagnitudeImportance, normalised per group).
        allocation: "uniform" removes `ratio` of every layer; "global" ranks units across layers, keeping at
            least MIN_KEEP of each (recurrent layers always go uniform).
        keep_layers: names of layers the caller wants left as they are.
        align: a Linear or convolution layer keeping 2 * `align` units or more keeps a multiple of `align`
            (`aligned`: ONNX Runtime's kernels run ragged widths slower); 1 = exact ratios.
    """
    if importance not in IMPORTANCES:
        raise ToolkitError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    if allocation not in ALLOCATIONS:
        raise ToolkitError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if not 0 < ratio < 1:
        raise ToolkitError(f"ratio must be in (0, 1), got {ratio}")
    was_training = module.training
    module.eval()
    frozen = _traced_frozen(module)
    try:
        report = PruneReport(widths_before=widths(module), parameters_before=count_parameters(module))
        try:
            with torch.no_grad():
                reference = module(example)
        except Exception as exc:  # the user's forward: any failure means these inputs do not fit it
            raise ToolkitError(f"the model cannot run on inputs of shape {tuple(example.shape[1:])}: "
                               f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}") from None
        order = _execution_order(module, example)
        output_layers = _output_layers(module, order)
        for name in output_layers:
            report.unpruned[name] = "output layer: the class count stays"
        for name in keep_layers:
            report.unpruned.setdefault(name, "kept as asked")
        recurrent = [n for n in order if isinstance(order[n], RECURRENT) and n not in report.unpruned]
        for name in recurrent:
            why = RecurrentPruner(module, name, order, importance).prune(example, ratio)
            if why:
                report.unpruned[name] = why
        _graph_prune(module, example, ratio, importance, allocation, report, order, align)
        with torch.no_grad():
            out = module(example)
        if out.shape != reference.shape:  # the checks above make this unreachable; a wrong model must not pass
            raise ToolkitError(f"pruning changed the output shape from {tuple(reference.shape)} to {tuple(out.shape)}")
        report.widths_after = widths(module)
        for name, w in report.widths_before.items():
            if report.widths_after.get(name) == w and name not in report.unpruned:
                report.unpruned[name] = "no unit of it can be removed without breaking a dependent layer"
        report.parameters_after = count_parameters(module)
        return report
    finally:
        module.train(was_training)
        for name, param in module.named_parameters():
            if name in frozen:
                param.requires_grad_(False)


def _traced_frozen(module: nn.Module) -> set[str]:
    """Let every parameter require gradients while pruning, and return the names of those that did not (frozen).

    Torch-Pruning traces the graph through autograd: a frozen layer that only the input feeds (a frozen first
    layer, a frozen backbone) has no gradient path, so it was missing from the graph and left unpruned, and
    was said to be unprunable "without breaking a dependent layer", while a frozen layer further in (fed by a
    trainable one) was pruned, and came back trainable (pruning makes new Parameters). Frozen layers are
    pruned like any other, and frozen again after (`prune_module`'s `finally`).
    """
    frozen = {name for name, param in module.named_parameters() if not param.requires_grad}
    for param in module.parameters():
        param.requires_grad_(True)
    return frozen


def _execution_order(module: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
    """The prunable leaf layers in the order the forward pass runs them (each once, first call)."""
    order: dict[str, nn.Module] = {}
    def seen(name):
        def hook(mod, inputs, output):
            order.setdefault(name, mod)
        return hook

    hooks = [m.register_forward_hook(seen(name)) for name, m in module.named_modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    return order


def _output_layers(module: nn.Module, order: dict[str, nn.Module]) -> list[str]:
    """The layer that produces the logits: the last prunable layer the forward pass runs."""
    return list(order)[-1:]


# ---------------------------------------------------------------- Torch-Pruning part

def _graph_prune(module, example, ratio, importance, allocation, report: PruneReport, order,
                 align: int = 1) -> None:
    """Prune Linear/Conv groups with Torch-Pruning; a group whose removal breaks the forward pass is
    left out (the pass starts again without it), and so is every group of a graph that cannot be traced."""
    import torch_pruning as tp

    names = {m: n for n, m in module.named_modules()}
    for _ in range(len(order) + 1):
        ignored = [m for n, m in module.named_modules() if n in report.unpruned or isinstance(m, RECURRENT)]
        ignored += [p for m in module.modules() if isinstance(m, RECURRENT) for p in m.parameters()]
        trial = copy.deepcopy(module)
        trial_names = {m: n for n, m in trial.named_modules()}
        trial_ignored = [dict(trial.named_modules())[names[m]] for m in ignored if isinstance(m, nn.Module)]
        trial_ignored += [p for m in trial.modules() if isinstance(m, RECURRENT) for p in m.parameters()]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scorer = tp.importance.GroupMagnitudeImportance(p=1 if importance == "l1" else 2)
                kept = _layer_kept(trial, example, trial_ignored, scorer, ratio, allocation, align)
                # Torch-Pruning keeps int(units * (1 - ratio)): the half unit makes that exactly `k`
                per_layer = {root: 1 - (k + 0.5) / units for root, (units, k) in kept.items()}
                pruner = tp.pruner.MetaPruner(trial, example, importance=scorer, pruning_ratio=ratio,
                                              pruning_ratio_dict=per_layer, ignored_layers=trial_ignored)
                broken = None
                for group in pruner.step(interactive=True):
                    root = trial_names.get(group[0].dep.target.module, "?")
                    group.prune()
                    try:
                        with torch.no_grad():
                            trial(example)
                    except Exception:  # any failure of the user's forward: this group is not safe
                        broken = root
                        break
        except Exception as exc:  # Torch-Pruning cannot trace this graph at all
            for n, m in order.items():
                if not isinstance(m, RECURRENT):
                    report.unpruned.setdefault(n, f"the dependency graph cannot be traced ({type(exc).__name__})")
            return
        if broken is None:
            _adopt(module, trial)
            return
        report.unpruned[broken] = "pruning it breaks the forward pass (a reshape the graph cannot follow)"


def _layer_kept(model: nn.Module, example, ignored, scorer, ratio: float, allocation: str, align: int) -> dict:
    """Per group root, the units it keeps: `ratio` of every group ("uniform", as Torch-Pruning counts:
    the floor of what is left), or of all the units of the groups ("global": ranked across groups by importance,
    normalised by the group's mean, per parameter a unit holds, each group keeping at least MIN_KEEP of its
    units). Then each count of 2 * `align` or more goes to the nearest multiple of `align` (`aligned`).

    Measured on digits at 50%, global: for an MLP 64-256-128-10 the second hidden layer then gives up three
    quarters (160-32, 3.2x smaller) where halving every layer reaches 2.95x; Torch-Pruning's own global
    ranking, by importance alone, does not look at what a unit costs.
    """
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, ignored_params=[
        p for p in ignored if isinstance(p, nn.Parameter)])
    layers = [m for m in ignored if isinstance(m, nn.Module)]
    ranked, sizes, roots = [], {}, {}
    for group in graph.get_all_groups(ignored_layers=layers, root_module_types=[nn.Conv1d, nn.Conv2d, nn.Linear]):
        scores = scorer(group)
        if scores is None:
            continue
        root = group[0].dep.target.module
        units = len(scores)
        roots[id(root)], sizes[id(root)] = root, units
        if allocation == "global":
            cost = max(1.0, sum(_parameters_per_unit(item.dep) * len(item.idxs) for item in group) / units)
            ranked += [(float(score) / cost, id(root)) for score in scores]
    if allocation == "global":
        counts = dict(sizes)
        target, removed = int(round(ratio * sum(sizes.values()))), 0
        for _, key in sorted(ranked):
            if removed == target:
                break
            if counts[key] > max(1, math.ceil(MIN_KEEP * sizes[key])):
                counts[key] -= 1
                removed += 1
    else:
        counts = {k: max(1, int(n * (1 - ratio))) for k, n in sizes.items()}
    return {roots[k]: (sizes[k], aligned(counts[k], sizes[k], align)) for k in sizes}


def aligned(kept: int, units: int, align: int) -> int:
    """`kept` units rounded to the nearest multiple of `align` (at most `units`), when it is 2 * `align` or more.

    ONNX Runtime's CPU kernels work on blocks of channels and columns, and a ragged width pays for the
    remainder: measured at batch 256, one thread, int8 static, a 1-D CNN pruned 30% to 22/44
    channels ran 3.32x the fp32 original, to 24/48 channels (25%) 4.26x, to 25/51 (20%) 2.89x; the unpruned
    one with ORT's quantize_static, 3.25x. An MLP 40-256-128: hidden 236/33 1.47x the unpruned int8 graph,
    232/32 1.65x, 240/32 1.74x. Small layers stay exact: rounding 12 units to 8 or 16 changes the ratio too much.
    """
    if align <= 1 or kept < 2 * align:
        return kept
    return min(units, align * round(kept / align))


def _parameters_per_unit(dep) -> float:
    """Parameters one pruned index removes from the dependency's target layer."""
    target = dep.target.module
    if isinstance(target, nn.Parameter):
        return target.numel() / max(target.shape)
    if not isinstance(target, nn.Module):
        return 0.0
    inputs = getattr(dep.handler, "__name__", "") == "prune_in_channels"
    total = 0.0
    for name, p in target.named_parameters(recurse=False):
        if isinstance(target, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            if inputs and name == "bias":
                continue
            total += p.numel() / p.shape[1 if inputs else 0]
        else:
            total += p.numel() / p.shape[0]
    return total


def _adopt(module: nn.Module, trial: nn.Module) -> None:
    """Make `module` the pruned `trial`: same object, the trial's children and parameters."""
    module.__dict__.update(trial.__dict__)


def narrower_copy(module: nn.Module, example: torch.Tensor, width_factor: float, *, seed: int = 0
                  ) -> tuple[nn.Module, PruneReport]:
    """The same architecture with `width_factor` of its hidden units, freshly initialised (a distillation
    student): pruned on the dependency graph (uniform, so every layer keeps the same share), then every
    layer's own `reset_parameters` re-draws its weights with `seed`; a fresh student learns every layer, those
    frozen in the teacher too."""
    student = copy.deepcopy(module)
    report = prune_module(student, example, 1.0 - width_factor, allocation="uniform") if width_factor < 1 else \
        PruneReport(widths_before=widths(student), widths_after=widths(student))
    torch.manual_seed(seed)
    for m in student.modules():
        if hasattr(m, "reset_parameters") and m is not student:
            m.reset_parameters()
    student.requires_grad_(True)
    return student, report
