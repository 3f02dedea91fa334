"""Hidden-unit pruning of nn.LSTM, nn.GRU and nn.RNN layers, written by hand.

Torch-Pruning 1.6 treats GRU/RNN weights as loose parameters and slices their last dimension, and its LSTM
pruner handles one layer only and slices the input weights along the wrong axis; no other maintained library
prunes recurrent units. `RecurrentPruner` removes hidden units of every layer of one module (both directions,
multi-layer modules keeping their one common width) and the matching input columns of the next layer and of
the layer that reads the module's output. Before keeping the result it checks that the pruned model computes
exactly what the original computes with those units silenced (their outputs held at zero), so a consumer it
cannot follow (a slice, a reshape) leaves the layer unpruned instead of silently wrong.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)


_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}
_SILENT_GATE = {nn.LSTM: 2, nn.GRU: 2, nn.RNN: 0}  # zeroing this gate's rows holds a unit's output at 0


class RecurrentPruner:
    """Hidden-unit pruning of one nn.LSTM / nn.GRU / nn.RNN and of the layer that reads its output."""

    def __init__(self, model: nn.Module, name: str, order: dict[str, nn.Module], importance: str):
        self.model, self.name, self.p = model, name, 1 if importance == "l1" else 2
        self.rnn = model.get_submodule(name)  # not order[name]: pruning the layer before may have replaced it
        names = list(order)
        following = names[names.index(name) + 1:]
        self.consumer = following[0] if following else None
        self.gates = _GATES[type(self.rnn)]
        self.directions = 2 if self.rnn.bidirectional else 1

    def prune(self, example: torch.Tensor, ratio: float) -> str | None:
        """Prune in place; None when done, else the reason the layer is left as it is."""
        rnn, hidden = self.rnn, self.rnn.hidden_size
        if getattr(rnn, "proj_size", 0):
            return "an LSTM with a projection (proj_size) is not pruned"
        if self.consumer is None:
            return "its output is the model's output"
        consumer = dict(self.model.named_modules())[self.consumer]
        columns = _in_width(consumer)
        if columns not in (hidden, hidden * self.directions):
            return f"its output reaches {self.consumer} through a layout the recurrent pruner does not follow"
        count = max(1, int(round(hidden * (1 - ratio))))
        if count == hidden:
            return "too narrow to prune at this ratio"
        keep = [self._scores(layer).topk(count).indices.sort().values for layer in range(rnn.num_layers)]
        silenced = self._silenced(keep)
        original = (self.rnn, consumer)
        pruned_rnn, pruned_consumer = copy.deepcopy(self.rnn), copy.deepcopy(consumer)
        self._slice(pruned_rnn, keep)
        _slice_inputs(pruned_consumer, self._columns(keep[-1], hidden, columns))
        self._install(pruned_rnn, pruned_consumer)
        try:
            with torch.no_grad():
                same = torch.allclose(self.model(example), silenced(example), rtol=1e-4, atol=1e-5)
        except Exception:  # the consumer reads the output some other way
            same = False
        if not same:
            self._install(*original)
            return f"its output reaches {self.consumer} through a layout the recurrent pruner does not follow"
        return None

    def _scores(self, layer: int) -> torch.Tensor:
        """Importance of each unit of `layer`: the norm of its rows in every gate of W_ih and W_hh, both directions."""
        hidden, rows = self.rnn.hidden_size, []
        for suffix in self._suffixes(layer):
            for kind in ("weight_ih", "weight_hh"):
                w = getattr(self.rnn, f"{kind}{suffix}").detach()
                rows.append(w.reshape(self.gates, hidden, -1).permute(1, 0, 2).reshape(hidden, -1))
        return torch.cat(rows, dim=1).float().norm(p=self.p, dim=1)

    def _suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}"] + ([f"_l{layer}_reverse"] if self.directions == 2 else [])

    def _rows(self, idx: torch.Tensor, hidden: int) -> torch.Tensor:
        return torch.cat([idx + gate * hidden for gate in range(self.gates)])

    def _slice(self, rnn, keep: list[torch.Tensor]) -> None:
        hidden = rnn.hidden_size
        with torch.no_grad():
            for layer, idx in enumerate(keep):
                rows = self._rows(idx, hidden)
                inputs = None if layer == 0 else self._columns(keep[layer - 1], hidden, hidden * self.directions)
                for suffix in self._suffixes(layer):
                    w_ih = getattr(rnn, f"weight_ih{suffix}")[rows]
                    setattr(rnn, f"weight_ih{suffix}", nn.Parameter(w_ih if inputs is None else w_ih[:, inputs]))
                    setattr(rnn, f"weight_hh{suffix}", nn.Parameter(getattr(rnn, f"weight_hh{suffix}")[rows][:, idx]))
                    if rnn.bias:
                        for kind in ("bias_ih", "bias_hh"):
                            setattr(rnn, f"{kind}{suffix}", nn.Parameter(getattr(rnn, f"{kind}{suffix}")[rows]))
        rnn.hidden_size = len(keep[0])
        rnn._init_flat_weights()

    def _columns(self, idx: torch.Tensor, hidden: int, columns: int) -> torch.Tensor:
        """Input columns of the next layer that read units `idx`: outputs are [forward units, backward units]."""
        return torch.cat([idx, idx + hidden]) if columns == 2 * hidden and self.directions == 2 else idx

    def _silenced(self, keep: list[torch.Tensor]):
        """A copy of the model whose units outside `keep` output exactly zero (the reference for the check)."""
        reference = copy.deepcopy(self.model)
        rnn = dict(reference.named_modules())[self.name]
        hidden, gate = rnn.hidden_size, _SILENT_GATE[type(rnn)]
        with torch.no_grad():
            for layer, idx in enumerate(keep):
                drop = torch.tensor(sorted(set(range(hidden)) - set(idx.tolist())), dtype=torch.long)
                rows = drop + gate * hidden if self.gates > 1 else drop
                for suffix in self._suffixes(layer):
                    for kind in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if rnn.bias else ()):
                        getattr(rnn, f"{kind}{suffix}")[rows] = 0.0
        return reference

    def _install(self, rnn, consumer) -> None:
        for name, module in ((self.name, rnn), (self.consumer, consumer)):
            self.model.set_submodule(name, module)
        self.rnn = rnn


def _in_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, RECURRENT):
        return module.input_size
    return None


def _slice_inputs(module: nn.Module, columns: torch.Tensor) -> None:
    """Keep only the input `columns` of a Linear or of the first layer of a recurrent module."""
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            module.weight = nn.Parameter(module.weight[:, columns])
            module.in_features = len(columns)
            return
        for suffix in ("_l0", "_l0_reverse") if module.bidirectional else ("_l0",):
            setattr(module, f"weight_ih{suffix}", nn.Parameter(getattr(module, f"weight_ih{suffix}")[:, columns]))
        module.input_size = len(columns)
        module._init_flat_weights()
