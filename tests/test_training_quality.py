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
