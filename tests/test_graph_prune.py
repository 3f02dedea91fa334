"""Structured pruning on the dependency graph, table-driven over user-style modules and the built-in families.

Every model reads the digits images (1x8x8, 10 classes), is trained a few epochs, then pruned at 50%:
parameters really shrink, the output shape stays, the pruned model runs and keeps its accuracy after a
short fine-tune, and the layers left alone are named.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from compress import depgraph
from compress.prune import finetune, structured_prune
from compress.distill import distill
from compress.export import run_onnx
from trainers import LoadedModel, ModelSpec, ToolkitError, accuracy, load_model, predict, save_model
from trainers.loop import LoopOptions, split_tensors, training_loop
from trainers.models import FAMILIES, build_model, count_parameters, register_family

USER_FAMILY = "zoo-user"  # a family name the toolkit does not know: the model is only its module


class Scale(nn.Module):
    """A custom elementwise layer: one learned scale per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x):
        return x * self.gain


class Residual1d(nn.Module):
    """Rows of the image as 8 channels of length 8; two residual blocks, one with BatchNorm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(8, 16, 3, padding=1)
        self.block1 = nn.Conv1d(16, 16, 3, padding=1)
        self.norm = nn.BatchNorm1d(16)
        self.block2 = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x.flatten(1, 2)))
        h = h + torch.relu(self.norm(self.block1(h)))
        h = h + torch.relu(self.block2(h))
        return self.head(h.mean(-1))


class Recurrent(nn.Module):
    """Rows of the image as 8 steps of 8 features; the last step's output (both directions) is classified."""

    def __init__(self, kind=nn.GRU, bidirectional=False, hidden=16):
        super().__init__()
        self.rnn = kind(8, hidden, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), 10)

    def forward(self, x):
        out, _ = self.rnn(x.flatten(1, 2))
        return self.fc(out[:, -1])


class SlicedRecurrent(Recurrent):
    """Reads only the first 8 output features: a layout the recurrent pruner cannot follow."""

    def __init__(self):
        super().__init__(nn.GRU, hidden=16)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        out, _ = self.rnn(x.flatten(1, 2))
        return self.fc(out[:, -1, :8])


class Branches(nn.Module):
    """Two dense branches concatenated before the classifier."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Linear(64, 24), nn.Linear(64, 16)
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc(torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1))


class FixedReshape(nn.Module):
    """A hard-coded reshape after the convolution: pruning its channels would break the forward pass."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(-1, 256))


def _sequential_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), Scale(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 32), nn.ReLU(),
                         nn.Linear(32, 10))


def _mlp_layernorm():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.LayerNorm(48), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 10))


SMALL_BUILT_IN = {"mlp": {"hidden": [32, 16]}, "cnn": {"channels": [8, 8], "hidden": [16]},
                  "lstm": {"hidden": [12, 10], "bidirectional": True}}

ZOO = {  # name -> (module factory, layers that must stay as they are)
    "sequential-cnn-bn-scale": (_sequential_cnn, {"10"}),
    "residual-1d-cnn": (Residual1d, {"head"}),
    "gru-2-layer": (lambda: Recurrent(nn.GRU), {"fc"}),
    "lstm-bidirectional": (lambda: Recurrent(nn.LSTM, bidirectional=True), {"fc"}),
    "mlp-layernorm-dropout": (_mlp_layernorm, {"7"}),
    "concat-branches": (Branches, {"fc"}),
    **{f"built-in-{family}": (family, {"head"}) for family in SMALL_BUILT_IN},
}


@dataclass
class UserConfig:
    """A user model has no architecture numbers the toolkit could rebuild it from."""


@pytest.fixture(scope="module")
def user_family():
    """A family name the toolkit cannot rebuild (only its module exists); removed again afterwards."""
    register_family(USER_FAMILY, UserConfig)(nn.Module)
    yield USER_FAMILY
    FAMILIES.unregister(USER_FAMILY)


def _module(name, digits):
    factory = ZOO[name][0]
    if isinstance(factory, str):
        return build_model(factory, SMALL_BUILT_IN[factory], digits.input_shape, 10, None, None)
    torch.manual_seed(0)
    return factory()


def _trained(name, digits, epochs=3):
    module = _module(name, digits)
    tensors = split_tensors(digits, torch.device("cpu"), splits=("train", "val"))
    training_loop(module, tensors, LoopOptions(epochs=epochs, lr=3e-3, select="val_accuracy"))
    return module.eval()


def _loaded(name, module, digits, family):
    """The model as a stage receives it: a built-in family's spec, or a bare module of an unknown family."""
    if isinstance(ZOO[name][0], str):
        family, config = ZOO[name][0], SMALL_BUILT_IN[ZOO[name][0]]
    else:
        config = {}
    spec = ModelSpec(family=family, config=config, input_shape=list(digits.input_shape), layout="image",
                     class_names=[str(c) for c in range(10)])
    return LoadedModel(module=module, spec=spec)


@pytest.fixture(scope="module")
def trained(digits):
    return {name: _trained(name, digits) for name in ZOO}


def _example(digits, n=16):
    return torch.from_numpy(np.ascontiguousarray(digits.x_train[:n], dtype=np.float32))


@pytest.mark.parametrize("name", list(ZOO))
def test_pruning_shrinks_keeps_the_output_shape_and_names_what_it_left(name, trained, digits):
    module = copy.deepcopy(trained[name])
    x = _example(digits)
    before = count_parameters(module)
    report = depgraph.prune_module(module, x, 0.5)
    assert count_parameters(module) == report.parameters_after < 0.7 * before
    with torch.no_grad():
        assert module(x).shape == (len(x), 10)
    assert set(ZOO[name][1]) <= set(report.unpruned), report.unpruned
    assert "output layer" in report.unpruned[sorted(ZOO[name][1])[0]]
    shrunk = [n for n, w in report.widths_before.items() if report.widths_after[n] < w]
    assert shrunk and not set(shrunk) & set(report.unpruned)
    for layer in shrunk:  # uniform: every pruned layer keeps about half its units
        assert abs(report.widths_after[layer] - report.widths_before[layer] / 2) <= 1


@pytest.mark.parametrize("name", list(ZOO))
def test_fine_tuning_keeps_the_accuracy_of_the_pruned_model(name, trained, digits):
    module = copy.deepcopy(trained[name])
    depgraph.prune_module(module, _example(digits), 0.5)
    pruned = accuracy(module, digits.x_val, digits.y_val)
    pruned_test = accuracy(module, digits.x_test, digits.y_test)
    tuned, history = finetune(module, digits, 1, teacher=trained[name])
    assert accuracy(tuned, digits.x_val, digits.y_val) == max(history["val_accuracy"]) >= pruned
    assert accuracy(tuned, digits.x_test, digits.y_test) >= min(pruned_test - 0.03, 0.9)  # selected on val
    assert accuracy(tuned, digits.x_test, digits.y_test) > 0.3  # ten classes: well above chance


def test_recurrent_pruning_computes_what_the_silenced_units_computed(trained, digits):
    """Each pruned hidden unit of a bidirectional 2-layer LSTM is gone from every gate, both directions and
    the next layer's inputs: the pruned module equals the original with those units held at zero."""
    module = copy.deepcopy(trained["lstm-bidirectional"])
    x = _example(digits)
    report = depgraph.prune_module(module, x, 0.5)
    assert report.widths_after["rnn"] == 8 and module.rnn.weight_ih_l1.shape == (4 * 8, 2 * 8)
    assert module.fc.in_features == 16
    with torch.no_grad():
        assert torch.isfinite(module(x)).all()


def test_a_layout_the_recurrent_pruner_cannot_follow_leaves_the_layer_alone(digits):
    torch.manual_seed(0)
    module = SlicedRecurrent().eval()
    x = _example(digits)
    with torch.no_grad():
        expected = module(x)
    report = depgraph.prune_module(module, x, 0.5)
    assert "rnn" in report.unpruned and "layout" in report.unpruned["rnn"]
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected)  # nothing changed


def test_a_reshape_the_graph_cannot_follow_is_named_not_a_crash(digits):
    torch.manual_seed(0)
    module = FixedReshape().eval()
    report = depgraph.prune_module(module, _example(digits), 0.5)
    assert report.widths_after == report.widths_before
    assert "reshape" in report.unpruned["conv"] and "output layer" in report.unpruned["fc"]
    assert "conv" in report.notes()[0]


@pytest.mark.parametrize("name", ["residual-1d-cnn", "gru-2-layer"])
def test_prune_structured_on_a_user_module_saves_onnx(name, trained, digits, user_family, tmp_path):
    model = _loaded(name, copy.deepcopy(trained[name]), digits, user_family)
    [variant] = structured_prune(model, digits, ratio=0.5, finetune_epochs=1)
    before, after = variant.recipe["parameters"]
    assert after < 0.7 * before and count_parameters(variant.model.module) == after
    assert variant.model.spec.runtime == "onnxruntime" and variant.onnx_bytes
    assert any("ONNX" in note for note in variant.notes)
    np.testing.assert_allclose(run_onnx(variant.onnx_bytes, digits.x_test[:32]),
                               predict(variant.model.module, digits.x_test[:32]), atol=1e-4, rtol=1e-4)
    assert variant.recipe["teacher"] is False and variant.recipe["criterion"] == "l2"  # the measured defaults


@pytest.mark.parametrize("family", list(SMALL_BUILT_IN))
def test_prune_structured_on_a_built_in_family_rebuilds_from_its_config(family, trained, digits, tmp_path):
    name = f"built-in-{family}"
    model = _loaded(name, trained[name], digits, family)
    [variant] = structured_prune(model, digits, ratio=0.5, finetune_epochs=1, teacher=True)
    assert variant.onnx_bytes is None and variant.model.spec.runtime == "torch"
    loaded = load_model(save_model(variant.model, tmp_path / "pruned"))
    np.testing.assert_allclose(predict(loaded, digits.x_test), predict(variant.model, digits.x_test), atol=1e-6)
    assert count_parameters(loaded.module) == variant.recipe["parameters"][1]


def test_distill_narrows_a_user_module_by_default(trained, digits, user_family):
    model = _loaded("residual-1d-cnn", trained["residual-1d-cnn"], digits, user_family)
    [variant] = distill(model, digits, epochs=1, width_factor=0.5, mixup=0.0)
    assert variant.recipe["student"] == "narrower"
    assert variant.recipe["student_config"]["widths"]["stem"] == 8
    assert isinstance(variant.model.module, Residual1d)  # the user's own architecture, narrower
    assert count_parameters(variant.model.module) < count_parameters(model.module)
    assert variant.onnx_bytes is not None and variant.model.spec.runtime == "onnxruntime"


def test_distill_trains_a_student_module_the_user_passes(trained, digits, user_family):
    model = _loaded("gru-2-layer", trained["gru-2-layer"], digits, user_family)
    student = Recurrent(nn.GRU, hidden=4)
    [variant] = distill(model, digits, student=student, epochs=1, mixup=0.0)
    assert variant.recipe["student"] == "module" and variant.recipe["student_config"]["widths"]["rnn"] == 4
    assert count_parameters(variant.model.module) == count_parameters(student)


def test_a_student_module_of_the_wrong_shape_is_refused_in_one_line(trained, digits, user_family):
    model = _loaded("gru-2-layer", trained["gru-2-layer"], digits, user_family)
    wrong_classes = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ToolkitError, match=r"outputs of shape \(3,\) per sample, the teacher \(10,\)$"):
        distill(model, digits, student=wrong_classes, epochs=1)
    wrong_inputs = nn.Sequential(nn.Flatten(), nn.Linear(5, 10))
    with pytest.raises(ToolkitError, match="cannot run on inputs of shape") as info:
        distill(model, digits, student=wrong_inputs, epochs=1)
    assert "\n" not in str(info.value)


def test_a_module_that_cannot_run_on_the_data_is_refused_in_one_line(digits):
    module = nn.Sequential(nn.Flatten(), nn.Linear(5, 10))
    with pytest.raises(ToolkitError, match=r"^the model cannot run on inputs of shape \(1, 8, 8\): RuntimeError") as info:
        depgraph.prune_module(module, _example(digits), 0.5)
    assert "\n" not in str(info.value)
    assert module[1].in_features == 5  # untouched


def test_kept_widths_are_multiples_of_the_alignment_and_small_layers_stay_exact():
    """A 30% ratio on 32/64 channels and 128 units keeps 24/48/128 x 0.7 -> 88 (ragged widths run slower in
    ONNX Runtime); with align=1 the exact floor, 22/44/89; a layer keeping under 2 x align units is not rounded."""
    assert [depgraph.aligned(k, n, 8) for k, n in ((22, 32), (44, 64), (89, 128), (12, 16), (15, 16), (250, 256))] == \
        [24, 48, 88, 12, 15, 248]
    assert depgraph.aligned(255, 256, 8) == 256 and depgraph.aligned(22, 32, 1) == 22

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv1d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 64, 3, padding=1), nn.ReLU(),
                             nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, 4))

    x = torch.randn(8, 1, 16)
    for align, expected in ((8, [24, 48, 88, 4]), (1, [22, 44, 89, 4])):
        module = net()
        report = depgraph.prune_module(module, x, 0.3, align=align)
        assert list(report.widths_after.values()) == expected
        with torch.no_grad():
            assert module(x).shape == (8, 4)


@pytest.mark.parametrize("frozen", ["0", "2"])
def test_a_frozen_layer_is_pruned_like_the_others_and_stays_frozen(frozen):
    """Torch-Pruning traces through autograd: a frozen first layer had no gradient path, was left unpruned "without
    breaking a dependent layer" (not the reason), while a frozen layer further in was pruned and came back
    trainable. Both are pruned now, and keep requires_grad=False."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    module.get_submodule(frozen).requires_grad_(False)
    report = depgraph.prune_module(module, torch.randn(8, 12), 0.5, align=1)
    assert report.unpruned == {"4": "output layer: the class count stays"}
    assert report.widths_after == {"0": 8, "2": 8, "4": 3}
    assert {n for n, p in module.named_parameters() if not p.requires_grad} == {f"{frozen}.weight", f"{frozen}.bias"}
    student, _ = depgraph.narrower_copy(module, torch.randn(8, 12), 0.5)
    assert all(p.requires_grad for p in student.parameters())  # a fresh student learns every layer
