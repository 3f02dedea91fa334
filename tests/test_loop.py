"""The one training loop (`trainers.loop`): selection, schedules, early stopping and the two hooks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from trainers import load_data
from trainers.errors import ToolkitError
from trainers.loop import Batch, LoopOptions, split_tensors, training_loop
from trainers.models import build_model


@pytest.fixture(scope="module")
def iris():
    data = load_data("iris", seed=0)
    return data, split_tensors(data, torch.device("cpu"), splits=("train", "val"))


def _model(data, seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": [16]}, data.input_shape, data.num_classes, data.mean, data.std)


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_starting_weights_compete_as_epoch_0(iris):
    """A fine-tune that only makes the model worse gives the starting weights back."""
    data, tensors = iris
    start = _model(data)
    training_loop(start, tensors, LoopOptions(epochs=3, lr=3e-2))  # a reasonable model to start from
    module = copy.deepcopy(start)
    state = training_loop(module, tensors, LoopOptions(epochs=2, lr=1e4, select="val_accuracy", score_start=True))
    assert [row["epoch"] for row in state.history] == [0, 1, 2]
    assert state.best_epoch == 0 and _same_weights(module, start)
    assert not module.training


def test_patience_stops_and_plateau_lowers_the_lr(iris):
    data, tensors = iris
    # So small a step that the validation loss never improves by the required 1e-4 after epoch 1.
    options = LoopOptions(epochs=50, lr=1e-7, schedule="plateau", lr_patience=1, patience=3)
    state = training_loop(_model(data), tensors, options)
    assert state.best_epoch == 1 and state.epoch == 4
    assert state.history[-1]["lr"] < 1e-7


def test_cosine_schedule_ends_at_zero(iris):
    data, tensors = iris
    state = training_loop(_model(data), tensors, LoopOptions(epochs=3, lr=1e-2, batch_size=16, schedule="cosine"))
    assert state.history[0]["lr"] < 1e-2 and state.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_hooks_change_nothing_but_what_they_compute(iris):
    """A loss hook equal to the default loss gives the same weights; a transform appending rows is trained on,
    and the reported accuracy counts the original rows only."""
    data, tensors = iris
    options = LoopOptions(epochs=2, lr=1e-2, seed=4)
    plain, hooked = _model(data), _model(data)
    training_loop(plain, tensors, options)
    training_loop(hooked, tensors, options, loss=lambda logits, batch: F.cross_entropy(logits, batch.y))
    assert _same_weights(plain, hooked)

    def doubled(batch: Batch) -> Batch:
        return Batch(torch.cat([batch.x, batch.x + 0.1 * torch.randn_like(batch.x)]), batch.y)

    def loss(logits, batch):
        return F.cross_entropy(logits, torch.cat([batch.y, batch.y]))

    runs = [training_loop(_model(data), tensors, options, loss=loss, transform=doubled).history for _ in range(2)]
    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])  # what the transform draws is seeded too
    assert strip(runs[0]) != strip(training_loop(_model(data), tensors, options).history)


def test_unknown_schedule_or_criterion_is_refused(iris):
    data, tensors = iris
    for options in (LoopOptions(epochs=1, lr=1e-3, schedule="step"), LoopOptions(epochs=1, lr=1e-3, select="f1")):
        with pytest.raises(ToolkitError):
            training_loop(_model(data), tensors, options)
