"""Training quality: the default settings give well-trained models on real data (CPU)."""

from __future__ import annotations

import pytest

from cli.main import main
from trainers import load_model


@pytest.mark.parametrize("data,family", [("digits", "mlp"), ("digits", "cnn"), ("digits", "lstm"),
                                         ("breast_cancer", "mlp")])
def test_defaults_reach_95_percent(data, family, tmp_path, capsys):
    assert main(["train", data, "--model", family, "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    model = load_model(tmp_path / "run")
    assert model.metrics["test_accuracy"] >= 0.95, model.metrics
    assert model.spec.data["name"] == data


def _schedule(config):
    return config.epochs, config.patience, config.lr_patience


def test_the_schedule_counts_optimizer_steps_on_a_small_training_split():
    """Unset, the schedule covers at least MIN_STEPS, PATIENCE_STEPS and LR_PATIENCE_STEPS optimizer steps;
    from 10 steps an epoch up it is the epoch defaults; what the user sets is kept."""
    from trainers import TrainConfig

    assert _schedule(TrainConfig()) == (None, None, None)
    assert _schedule(TrainConfig().for_data(50)) == (1000, 150, 50)  # one step an epoch
    assert _schedule(TrainConfig().for_data(576)) == (112, 17, 6)  # nine steps
    assert _schedule(TrainConfig().for_data(577)) == (100, 15, 5)  # ten steps
    assert _schedule(TrainConfig().for_data(1221)) == (100, 15, 5)  # digits' training split
    assert _schedule(TrainConfig(batch_size=16).for_data(50)) == (250, 38, 13)  # four steps
    assert _schedule(TrainConfig(epochs=3, patience=2).for_data(50)) == (3, 2, 50)


def test_a_tiny_training_split_trains_past_the_epoch_defaults(tmp_path):
    """50 training rows are one optimizer step an epoch: the run goes on past 100 epochs (early stopping waits
    150 steps), and the run directory records the schedule it used."""
    import json

    import numpy as np

    from trainers import TrainConfig, load_data, train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=90) > 0).astype(int)
    data = load_data((x, y))
    assert len(data.y_train) <= 64
    result = train(data, "mlp", TrainConfig(device="cpu"), out=tmp_path / "run", progress=False)
    assert result.epochs_run > 150 and result.epochs_run >= result.best_epoch + 150 or result.epochs_run == 1000
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["epochs"], saved["patience"], saved["lr_patience"]) == (1000, 150, 50)
    assert result.model.spec.training["epochs"] == 1000
