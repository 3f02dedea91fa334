"""Every registered model family against the common contract (trainers.checks), trained end to end on every
input layout, and its config checked.

A new family added with `@register_family` joins these tables automatically.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trainers import (
    ArtifactError, TrainConfig, ToolkitError, build_model, get_family, list_models, load_data, load_model,
    make_config, predict, train,
)
from trainers.checks import parametrize_with_checks
from trainers.models import to_sequence

FAMILIES = list_models()
SHAPES = {"features": (12,), "signal": (3, 16), "image": (2, 8, 8)}


def synthetic(shape, n=120, classes=3, seed=0):
    """Separable data: the class shifts the mean of every input value."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, *shape)).astype(np.float32) + y.reshape(-1, *([1] * len(shape))) * 1.5
    return x, y


def test_registry_lists_the_builtin_families():
    assert {"mlp", "cnn", "lstm"} <= set(FAMILIES)
    assert get_family("cnn").config.__name__ == "CNNConfig" and "Conv2d" in get_family("cnn").description
    with pytest.raises(ToolkitError, match="unknown model family 'gru'; choose from mlp, cnn, lstm"):
        get_family("gru")


@parametrize_with_checks(FAMILIES)
def test_family_contract(family, check):
    check(family)


@pytest.mark.parametrize("family, values, message", [
    ("mlp", {"hidden": [16, 0]}, "mlp config hidden.1: input should be greater than or equal to 1, got 0"),
    ("mlp", {"dropout": 1.0}, "mlp config dropout: input should be less than 1, got 1.0"),
    ("mlp", {"hidden": [8], "width": 3}, "mlp config width: unknown option"),
    ("cnn", {"kernel_size": 4}, "cnn config kernel_size: value error, must be odd"),
    ("cnn", {"channels": "16"}, "cnn config channels: input should be a valid list"),
    ("cnn", {"head": "max"}, "cnn config head: input should be 'flatten' or 'gap', got 'max'"),
    ("lstm", {"hidden": []}, "lstm config hidden: list should have at least 1 item"),
    ("lstm", {"bidirectional": "yes"}, "lstm config bidirectional: input should be a valid boolean"),
])
def test_config_values_are_checked_in_one_line(family, values, message):
    with pytest.raises(ToolkitError) as caught:
        make_config(family, values)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_config_defaults_and_integer_dropout():
    assert make_config("mlp", {"dropout": 0}).dropout == 0.0
    assert make_config("cnn", {}).kernel_size == 3


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", list(SHAPES))
def test_train_save_load_predict_round_trip(family, layout, tmp_path):
    x, y = synthetic(SHAPES[layout])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    result = train(str(tmp_path / "d.npz"), family, TrainConfig(epochs=3), out=tmp_path / "run", progress=False)
    assert result.epochs_run == 3
    loaded = load_model(tmp_path / "run")
    assert loaded.spec.family == family
    assert loaded.spec.input_shape == list(SHAPES[layout])
    assert loaded.spec.layout == layout
    data = load_data(str(tmp_path / "d.npz"))
    before = predict(result.model, data.x_test)
    after = predict(loaded, data.x_test)
    assert before.shape == (len(data.y_test), 3)
    np.testing.assert_array_equal(before, after)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"model.json", "model.safetensors", "metrics.json", "result.json", "config.json", "env.json",
            "metrics.jsonl"} <= files
    assert not [name for name in files if name.startswith("checkpoint")]  # a finished run keeps none
    assert not (tmp_path / "run.partial").exists()
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_metrics_on_cpu(family):
    data = load_data("iris", seed=3)
    config = TrainConfig(epochs=4, seed=3)
    a = train(data, family, config, progress=False)
    b = train(data, family, TrainConfig(epochs=4, seed=3), progress=False)
    assert a.metrics == b.metrics
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    c = train(data, family, TrainConfig(epochs=4, seed=4), progress=False)
    assert [h["train_loss"] for h in c.history] != [h["train_loss"] for h in a.history]


@pytest.mark.parametrize("family", FAMILIES)
def test_width_lists_rebuild_pruned_architectures(family, tmp_path):
    """Per-layer widths in model.json are all it takes to rebuild a narrower model."""
    arch = {"mlp": {"hidden": [7, 5]}, "cnn": {"channels": [3, 5], "hidden": [6]},
            "lstm": {"hidden": [9, 4], "bidirectional": True}}[family]
    x, y = synthetic((2, 8, 8))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    result = train(str(tmp_path / "d.npz"), family, TrainConfig(epochs=1, model=arch), out=tmp_path / "r",
                   progress=False)
    spec = json.loads((tmp_path / "r" / "model.json").read_text())
    for key, value in arch.items():
        assert spec["config"][key] == value
    loaded = load_model(tmp_path / "r")
    assert sum(p.numel() for p in loaded.module.parameters()) == sum(
        p.numel() for p in result.model.module.parameters())


def test_linear_mlp_has_no_hidden_layer():
    model = build_model("mlp", {"hidden": []}, (6,), 3)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 1 and linear[0].in_features == 6


def test_lstm_reads_along_last_spatial_axis():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    seq = to_sequence(x)
    assert seq.shape == (2, 4, 15)  # H steps of C*W features
    assert torch.equal(seq[0, 1, :5], x[0, 0, 1])  # step 1 starts with channel 0, row 1
    assert to_sequence(torch.zeros(2, 3, 7)).shape == (2, 7, 3)  # L steps of C
    assert to_sequence(torch.zeros(2, 9)).shape == (2, 9, 1)  # F steps of 1


def test_normalisation_travels_with_the_model(tmp_path):
    data = load_data("wine")
    result = train(data, "mlp", TrainConfig(epochs=1), out=tmp_path / "w", progress=False)
    spec = load_model(tmp_path / "w").spec
    np.testing.assert_allclose(spec.preprocessing["mean"], data.x_train.mean(axis=0), rtol=1e-5)
    buffers = dict(result.model.module.named_buffers())
    np.testing.assert_allclose(buffers["standardize.std"].numpy(), data.std)


@pytest.mark.parametrize("edit", ["widths", "family", "classes"])
def test_load_rejects_model_json_that_disagrees_with_weights(edit, tmp_path):
    train("iris", "mlp", TrainConfig(epochs=1), out=tmp_path / "m", progress=False)
    path = tmp_path / "m" / "model.json"
    spec = json.loads(path.read_text())
    if edit == "widths":
        spec["config"]["hidden"] = [17, 3]
    elif edit == "family":
        spec["family"] = "lstm"
        spec["config"] = {"hidden": [8]}
    else:
        spec["class_names"] = spec["class_names"] + ["extra"]
    path.write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match="does not match model.json"):
        load_model(tmp_path / "m")


def test_load_rejects_truncated_and_modified_weights(tmp_path):
    train("iris", "mlp", TrainConfig(epochs=1), out=tmp_path / "m", progress=False)
    weights = tmp_path / "m" / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(tmp_path / "m")
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(tmp_path / "m")


def test_load_rejects_truncated_weights_even_without_checksum(tmp_path):
    train("iris", "mlp", TrainConfig(epochs=1), out=tmp_path / "m", progress=False)
    spec_path = tmp_path / "m" / "model.json"
    spec = json.loads(spec_path.read_text())
    spec["weights"].pop("sha256")
    spec_path.write_text(json.dumps(spec))
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="truncated"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("case", ["missing_dir", "file_not_dir", "no_model_json", "bad_json", "no_weights"])
def test_load_rejects_non_artifacts(case, tmp_path):
    target = tmp_path / "x"
    if case == "file_not_dir":
        target.write_text("hello")
    elif case != "missing_dir":
        train("iris", "mlp", TrainConfig(epochs=1), out=target, progress=False)
        if case == "no_model_json":
            (target / "model.json").unlink()
        elif case == "bad_json":
            (target / "model.json").write_text("{not json")
        else:
            (target / "model.safetensors").unlink()
    with pytest.raises(ArtifactError):
        load_model(target)


@pytest.mark.parametrize("layout", ["signal", "image"])
def test_cnn_gap_head_pools_each_channel_and_survives_pruning_and_export(layout, tmp_path):
    """`head: gap` feeds one value per channel to the dense layers (however long the input), and the pruned and
    exported model still predicts what the PyTorch one does."""
    import onnxruntime as ort

    from compress import export_onnx
    from compress.prune import structured_prune

    x, y = synthetic(SHAPES[layout])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    result = train(str(tmp_path / "d.npz"), "cnn", TrainConfig(epochs=3, model={"head": "gap", "channels": [8, 16]}),
                   out=tmp_path / "run", progress=False)
    module = result.model.module
    assert module.classifier[0].in_features == 16   # the last block's channels, not channels x positions
    longer = build_model("cnn", make_config("cnn", {"head": "gap", "channels": [8, 16]}),
                         (SHAPES[layout][0], *[4 * s for s in SHAPES[layout][1:]]), 3, 0.0, 1.0)
    assert longer.classifier[0].in_features == 16
    loaded = load_model(tmp_path / "run")
    assert loaded.spec.config["head"] == "gap"
    data = load_data(str(tmp_path / "d.npz"))
    np.testing.assert_array_equal(predict(result.model, data.x_test), predict(loaded, data.x_test))
    [pruned] = structured_prune(loaded, data, ratio=0.5, finetune_epochs=1)
    assert pruned.model.module.classifier[0].in_features == 8
    session = ort.InferenceSession(export_onnx(pruned.model, data), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: data.x_test})[0]
    np.testing.assert_allclose(onnx_out, predict(pruned.model, data.x_test), atol=1e-4)
