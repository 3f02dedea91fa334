"""The one training loop (`trainers.loop`): selection, schedules, early stopping and the two hooks."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from trainers import load_data
from trainers.errors import ToolkitError
from trainers.loop import SIGNAL_MARGIN, Batch, LoopOptions, chance_loss, split_tensors, training_loop
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


@pytest.mark.parametrize("select, kept", [("val_loss", 2), ("val_accuracy", 1), ("val_accuracy_then_loss", 3)])
def test_each_criterion_keeps_its_epoch(select, kept):
    """Validation accuracy 0.9, 0.8, 0.9, 0.9 and loss 0.50, 0.30, 0.40, 0.45 over epochs 1-4: the loss alone
    keeps epoch 2, the accuracy alone the first 0.9 (epoch 1), the accuracy then the loss the 0.9 of lowest loss."""
    from trainers.loop import LoopState, _select

    rows = [{"epoch": 1, "val_accuracy": 0.9, "val_loss": 0.50}, {"epoch": 2, "val_accuracy": 0.8, "val_loss": 0.30},
            {"epoch": 3, "val_accuracy": 0.9, "val_loss": 0.40}, {"epoch": 4, "val_accuracy": 0.9, "val_loss": 0.45}]
    module = torch.nn.Linear(1, 1)
    state = LoopState(None, None, None, best_weights={}, best_score=float("inf" if select == "val_loss" else "-inf"))
    for row in rows:
        state.history.append(row)
        _select(state, module, LoopOptions(epochs=4, lr=1e-3, select=select), row)
    assert state.best_epoch == kept
    assert state.bad_epochs == 4 - kept  # the epochs after the kept one count towards patience


def test_an_mlp_keeps_its_most_accurate_epoch_by_default(iris):
    from trainers import TrainConfig, train

    data, _ = iris
    assert [TrainConfig().for_family(f).select for f in ("mlp", "cnn", "lstm")] == [
        "val_accuracy_then_loss", "val_loss", "val_loss"]
    assert TrainConfig(select="val_accuracy").for_family("mlp").select == "val_accuracy"  # what the user set stays
    result = train(data, "mlp", TrainConfig(epochs=15, device="cpu", patience=15), progress=False)
    history = [row for row in result.history if "val_accuracy" in row and row["epoch"] > 0]
    top = max(row["val_accuracy"] for row in history)
    kept = next(row for row in history if row["epoch"] == result.best_epoch)
    assert kept["val_accuracy"] == top
    assert kept["val_loss"] <= min(row["val_loss"] for row in history if row["val_accuracy"] == top) + 1e-4
    by_loss = train(data, "mlp", TrainConfig(epochs=15, device="cpu", patience=15, select="val_loss"), progress=False)
    assert by_loss.best_epoch == min(history, key=lambda row: row["val_loss"])["epoch"]  # the same run, other epoch


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


def test_replay_runs_each_epoch_at_its_lr_and_last_keeps_the_final_weights(iris):
    """A refit's loop: the LRs given, one per epoch, and the weights of the last epoch, whatever the validation
    split says (the refit trains on it)."""
    data, tensors = iris
    lrs = (3e-2, 3e-2, 9e-3, 2.7e-3)
    module = _model(data)
    state = training_loop(module, tensors, LoopOptions(epochs=4, lr=1.0, schedule="replay", lrs=lrs, select="last"))
    assert [row["lr"] for row in state.history] == list(lrs)
    assert state.best_epoch == 4
    # The same epochs at the first LR throughout take other steps: the replayed LRs were used, not recorded only.
    flat = _model(data)
    training_loop(flat, tensors, LoopOptions(epochs=4, lr=3e-2, select="last"))
    assert not _same_weights(module, flat)
    # The last epoch's weights, even where the validation loss says an earlier epoch was better.
    diverging = _model(data)
    state = training_loop(diverging, tensors, LoopOptions(epochs=3, lr=1.0, schedule="replay", lrs=(1e-2, 30.0, 30.0),
                                                          select="last"))
    losses = [row["val_loss"] for row in state.history]
    assert min(losses) < losses[-1] and state.best_epoch == 3
    with pytest.raises(ToolkitError, match="replay"):
        training_loop(_model(data), tensors, LoopOptions(epochs=3, lr=1e-2, schedule="replay", lrs=(1e-2,)))


def test_a_model_at_chance_is_neither_stopped_nor_slowed_while_it_waits(iris):
    """`wait_for_signal`: patience and the plateau schedule count from the first epoch whose validation loss is
    clearly under chance. Labels shuffled: nothing to learn, the loss never gets there."""
    data, tensors = iris
    assert chance_loss(torch.tensor([0, 1, 2, 0, 1, 2])) == pytest.approx(math.log(3))
    generator = torch.Generator().manual_seed(0)
    noise = {"x_train": torch.randn(300, 4, generator=generator), "y_train": torch.randint(0, 3, (300,), generator=generator),
             "x_val": torch.randn(300, 4, generator=generator), "y_val": torch.randint(0, 3, (300,), generator=generator)}
    options = LoopOptions(epochs=12, lr=1e-2, schedule="plateau", lr_patience=1, patience=3)
    hasty = training_loop(_model(data), noise, options)
    assert hasty.epoch < 12  # stopped by the patience
    waiting = training_loop(_model(data), noise, dataclasses.replace(options, wait_for_signal=True))
    chance = chance_loss(noise["y_train"]) * SIGNAL_MARGIN
    assert all(row["val_loss"] >= chance for row in waiting.history)
    assert waiting.epoch == 12 and {row["lr"] for row in waiting.history} == {1e-2}
    # A model that learns leaves chance at once: the same run with or without waiting.
    learn = LoopOptions(epochs=40, lr=3e-2, schedule="plateau", lr_patience=2, patience=4)
    runs = [training_loop(_model(data), tensors, dataclasses.replace(learn, wait_for_signal=w)).history
            for w in (False, True)]
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in h] for h in runs]
    assert untimed[0] == untimed[1] and len(runs[0]) < 40


def test_train_warns_when_the_model_never_left_chance(tmp_path):
    from fake_runs import toolkit_warnings

    from trainers import TrainConfig, train

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "noise.npz", x=rng.normal(size=(400, 6)).astype(np.float32), y=rng.integers(0, 3, 400))
    with toolkit_warnings() as said:
        train(str(tmp_path / "noise.npz"), "mlp", TrainConfig(epochs=3, device="cpu"), progress=False)
    assert any("never fell clearly under" in line and "predicting the class frequencies" in line for line in said)
    with toolkit_warnings() as said:
        train("iris", "mlp", TrainConfig(epochs=30, device="cpu"), progress=False)  # learns: no warning
    assert not any("never fell" in line for line in said)


def test_training_accuracy_is_the_same_however_often_the_logits_are_argmaxed(iris, monkeypatch):
    """`train_epoch` argmaxes the stashed logits every STASH_VALUES values: after every batch, every few batches or
    once an epoch, the predictions (and the weights) are the same."""
    data, tensors = iris
    runs = []
    for values in (1 << 18, 1, 100):
        monkeypatch.setattr("trainers.loop.STASH_VALUES", values)
        module = _model(data)
        state = training_loop(module, tensors, LoopOptions(epochs=2, lr=3e-2, batch_size=16))
        runs.append(([row["train_accuracy"] for row in state.history], module))
    assert runs[0][0] == runs[1][0] == runs[2][0]
    assert _same_weights(runs[0][1], runs[1][1]) and _same_weights(runs[0][1], runs[2][1])
