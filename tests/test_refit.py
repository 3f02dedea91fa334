"""Refit on the training and validation rows after early stopping (`TrainConfig.refit`, `trainers.fit._refit`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import trainers.loop as loop
from trainers import TrainConfig, TrainingInterrupted, load_data, predict, train
from trainers.errors import ToolkitError
from trainers.trainconfig import REFIT_FAMILIES, REFIT_MAX_TRAIN_ROWS, REFIT_MIN_VAL_ROWS
from trainers.schema import read_result

EPOCHS = 8


@pytest.mark.parametrize("family, train_rows, val_rows, asked, used", [
    ("mlp", 1000, REFIT_MIN_VAL_ROWS, None, True), ("lstm", 1000, REFIT_MIN_VAL_ROWS, None, True),
    ("cnn", 1000, REFIT_MIN_VAL_ROWS, None, False), ("mlp", 1000, REFIT_MIN_VAL_ROWS - 1, None, False),
    ("mlp", REFIT_MAX_TRAIN_ROWS + 1, 20_000, None, False), ("cnn", 1000, 10, True, True),
    ("mlp", REFIT_MAX_TRAIN_ROWS + 1, 20_000, True, True), ("mlp", 1000, 5000, False, False)])
def test_refit_is_on_for_an_mlp_or_lstm_with_enough_validation_rows_unless_set(family, train_rows, val_rows, asked,
                                                                               used):
    assert TrainConfig(refit=asked).for_data(train_rows, val_rows).for_family(family).refit is used
    assert family in REFIT_FAMILIES or not TrainConfig().for_family(family).refit


@pytest.fixture(scope="module")
def runs(digits, tmp_path_factory):
    """The digits MLP trained with and without the refit, same seed, same data (216 validation rows)."""
    out = tmp_path_factory.mktemp("refit") / "run"
    refitted = train(digits, "mlp", TrainConfig(epochs=EPOCHS, device="cpu"), out=out, progress=False)
    plain = train(digits, "mlp", TrainConfig(epochs=EPOCHS, device="cpu", refit=False), progress=False)
    return refitted, plain, out


def test_the_refit_trains_the_kept_epochs_on_both_splits_and_reports_held_out_validation(runs, digits):
    refitted, plain, out = runs
    assert len(digits.y_val) >= REFIT_MIN_VAL_ROWS and plain.refit is None
    # The same selection run: same history, same epoch kept.
    untimed = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert refitted.best_epoch == plain.best_epoch and untimed(refitted.history) == untimed(plain.history)
    block = refitted.refit
    assert block["epochs"] == refitted.best_epoch == len(block["history"])
    assert block["rows"] == len(digits.y_train) + len(digits.y_val)
    # The selection run's LRs, replayed: epoch e at the LR it ran at (the LR recorded after epoch e - 1).
    ran_at = [TrainConfig().lr] + [row["lr"] for row in refitted.history[:refitted.best_epoch - 1]]
    assert [row["lr"] for row in block["history"]] == ran_at
    # The validation figures are the selection run's at its kept epoch, held out; the model is another one.
    kept = next(r for r in refitted.history if r["epoch"] == refitted.best_epoch)
    assert refitted.metrics["val_accuracy"] == pytest.approx(kept["val_accuracy"], abs=1e-6)
    assert refitted.metrics["val_accuracy"] == pytest.approx(plain.metrics["val_accuracy"], abs=1e-6)
    x = digits.x_test[:64]
    assert not np.allclose(predict(refitted.model, x), predict(plain.model, x))
    # It learned the validation rows: its loss there is lower than the model that never saw them.
    assert _val_loss(refitted.model, digits) < _val_loss(plain.model, digits)
    # On disk: schema version 2 with the refit block; the config records the choice.
    result = read_result(out / "result.json")
    assert result.schema_version == 2 and result.refit.epochs == block["epochs"] and result.refit.rows == block["rows"]
    assert json.loads((out / "config.json").read_text())["refit"] is True


def _val_loss(model, data) -> float:
    logits = torch.from_numpy(predict(model, data.x_val))
    return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(data.y_val)))


def test_a_refit_interrupted_keeps_the_selection_runs_model(digits, runs, monkeypatch, capsys):
    _, plain, _ = runs
    joined = len(digits.y_train) + len(digits.y_val)
    real = loop.train_epoch

    def stopping(model, state, tensors, *args, **kwargs):
        if len(tensors["y_train"]) == joined and state.epoch >= 1:  # the refit's second epoch: Ctrl-C
            raise KeyboardInterrupt
        return real(model, state, tensors, *args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", stopping)
    with pytest.raises(TrainingInterrupted) as stop:
        train(digits, "mlp", TrainConfig(epochs=EPOCHS, device="cpu"), progress=False)
    result = stop.value.result
    assert result.interrupted and result.refit is None
    assert "not refitted" in capsys.readouterr().err
    x = digits.x_test[:64]
    np.testing.assert_array_equal(predict(result.model, x), predict(plain.model, x))


def test_refit_is_refused_for_data_read_batch_by_batch(tmp_path):
    y = np.repeat(np.arange(3), 300)
    x = np.random.default_rng(0).normal(size=(len(y), 4)).astype(np.float32) + y[:, None]
    np.save(tmp_path / "rows.npy", x)
    np.save(tmp_path / "rows.labels.npy", y)
    data = load_data(tmp_path / "rows.npy")
    assert len(data.y_val) >= REFIT_MIN_VAL_ROWS and not loop.in_memory(data)
    with pytest.raises(ToolkitError, match="batch by batch"):
        train(data, "mlp", TrainConfig(epochs=1, device="cpu", refit=True), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    result = train(data, "mlp", TrainConfig(epochs=1, device="cpu"), progress=False)  # unset: off for such data
    assert result.refit is None and result.model.spec.training["refit"] is False


def test_a_version_1_train_result_is_still_read(runs, tmp_path):
    _, _, out = runs
    old = json.loads((out / "result.json").read_text())
    old.pop("refit")
    old["schema_version"] = 1
    (tmp_path / "result.json").write_text(json.dumps(old))
    assert read_result(tmp_path / "result.json").schema_version == 1
    old["refit"] = None  # a field version 1 does not have: refused
    (tmp_path / "result.json").write_text(json.dumps(old))
    with pytest.raises(ToolkitError):
        read_result(tmp_path / "result.json")


def test_the_refit_has_its_own_progress_bar_and_every_bar_is_stopped(digits, monkeypatch):
    import io

    import trainers.fit as fit

    stream, made = io.StringIO(), []
    real = fit.ConsoleProgress

    def console():
        made.append(real(live=True, stream=stream))
        return made[-1]

    monkeypatch.setattr(fit, "ConsoleProgress", console)
    result = train(digits, "mlp", TrainConfig(epochs=4, device="cpu"), progress=True)
    assert result.refit is not None
    assert "train" in stream.getvalue() and "refit" in stream.getvalue()
    assert len(made) == 1 and made[0]._bars is None  # no live display left running


def test_a_run_stopped_in_its_refit_resumes_to_the_epochs_of_an_uninterrupted_one(digits, tmp_path):
    """The checkpoint of an early-stopped run has run out of patience: before, the resumed run trained another
    epoch before it looked (27 epochs against 26 on a 20,000-row set; here 17 against 13, that epoch scoring
    better and resetting the patience)."""
    config = TrainConfig(epochs=60, patience=2, seed=1, device="cpu", model={"hidden": [32]})
    reference = train(digits, "mlp", config, progress=False)
    assert reference.epochs_run < 60 and reference.refit is not None  # stopped early, then refitted

    def stop_in_the_refit(event):
        if event.stage == "refit":
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as stop:
        train(digits, "mlp", config, out=tmp_path / "r", progress=stop_in_the_refit)
    stopped = stop.value.result
    assert stopped.interrupted and stopped.refit is None
    resumed = train(digits, "mlp", config, out=tmp_path / "r", resume=True, progress=False)
    assert (resumed.epochs_run, resumed.best_epoch) == (reference.epochs_run, reference.best_epoch)
    assert resumed.refit["epochs"] == reference.refit["epochs"] and resumed.metrics == reference.metrics
