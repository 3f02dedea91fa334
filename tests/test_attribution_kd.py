"""Input-gradient matching (Jacobian matching) in distillation and in the fine-tune after structured pruning."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from compress import get_method
from compress.distill import distill, train_student
from compress.losses import attribution_loss, input_gradients
from compress.prune import structured_prune
from trainers import ToolkitError, TrainConfig, train
from trainers.models import build_model


@pytest.fixture(scope="module")
def teacher(digits):
    return train(digits, "mlp", TrainConfig(epochs=4, model={"hidden": [32, 16]}, device="cpu", seed=0),
                 progress=False).model


def _student(digits, seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": [16]}, digits.input_shape, 10, None, None)


def _gradient_cosine(student, teacher, data) -> float:
    """Mean cosine between the two models' input gradients of the true-class logit on the test split."""
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    ours, theirs = input_gradients(student.eval(), x, y).flatten(1), input_gradients(teacher.eval(), x, y).flatten(1)
    return float(F.cosine_similarity(ours, theirs, dim=1).mean())


def test_the_loss_is_zero_for_the_teacher_itself_and_trains_the_student(teacher, digits):
    x, y = torch.from_numpy(digits.x_train[:32]), torch.from_numpy(digits.y_train[:32])
    module = teacher.module.eval()
    assert float(attribution_loss(module, module, x, y).detach()) == pytest.approx(0.0, abs=1e-5)
    other = _student(digits)
    value = attribution_loss(other, module, x, y)
    assert 0.0 < float(value.detach()) <= 2.0
    value.backward()  # double backpropagation reaches the student's weights
    assert other.head.weight.grad is not None and float(other.head.weight.grad.abs().sum()) > 0


def test_distilled_gradients_end_closer_to_the_teachers(teacher, digits):
    initial = _student(digits)
    options = dict(seed=1, teacher=teacher.module, mixup=0.0)
    plain, _ = train_student(copy.deepcopy(initial), digits, 3, **options)
    matched, _ = train_student(copy.deepcopy(initial), digits, 3, attribution_weight=5.0, **options)
    assert _gradient_cosine(matched, teacher.module, digits) > _gradient_cosine(plain, teacher.module, digits) + 0.05


def test_weight_zero_is_the_plain_run_weight_for_weight(teacher, digits):
    initial = _student(digits)
    plain, _ = train_student(copy.deepcopy(initial), digits, 1, seed=2, teacher=teacher.module)
    zero, _ = train_student(copy.deepcopy(initial), digits, 1, seed=2, teacher=teacher.module, attribution_weight=0.0)
    for (name, a), (_, b) in zip(plain.state_dict().items(), zero.state_dict().items()):
        assert torch.equal(a, b), name


def test_pruning_with_weight_zero_is_the_plain_fine_tune(teacher, digits):
    [plain] = structured_prune(teacher, digits, ratio=0.5, finetune_epochs=1, seed=4)
    [zero] = structured_prune(teacher, digits, ratio=0.5, finetune_epochs=1, seed=4, attribution_weight=0.0)
    for (name, a), (_, b) in zip(plain.model.module.state_dict().items(), zero.model.module.state_dict().items()):
        assert torch.equal(a, b), name
    assert plain.recipe == zero.recipe


def test_pruned_gradients_end_closer_to_the_unpruned_models(teacher, digits):
    options = dict(ratio=0.5, finetune_epochs=3, seed=0)
    [plain] = structured_prune(teacher, digits, **options)
    [matched] = structured_prune(teacher, digits, attribution_weight=2.0, **options)
    assert "attribution_weight" not in plain.recipe
    assert matched.recipe["attribution_weight"] == 2.0
    assert (_gradient_cosine(matched.model.module, teacher.module, digits)
            > _gradient_cosine(plain.model.module, teacher.module, digits))


def test_distill_records_the_weight(teacher, digits):
    [variant] = distill(teacher, digits, student_config={"hidden": [8]}, epochs=1, attribution_weight=0.5)
    assert variant.recipe["attribution_weight"] == 0.5
    assert variant.model.spec.lineage["recipe"]["attribution_weight"] == 0.5
    assert np.isfinite(variant.recipe["distilled_accuracy"])


@pytest.mark.parametrize("method", ["distill", "prune-structured"])
@pytest.mark.parametrize("value, says", [(-0.1, "greater than or equal to 0"), (101.0, "less than or equal to 100"),
                                         (float("nan"), "finite number"), ("strong", "valid number")])
def test_bad_weights_are_refused_in_one_line(method, value, says, teacher, digits):
    with pytest.raises(ToolkitError) as info:
        get_method(method).func(teacher, digits, attribution_weight=value)
    message = str(info.value)
    assert "\n" not in message and "attribution_weight" in message and says in message


def test_cli_refuses_a_bad_weight_in_one_line(digits, tmp_path, capsys):
    from cli.main import main

    train(digits, "mlp", TrainConfig(epochs=1, model={"hidden": [8]}, device="cpu"), out=tmp_path / "mlp", progress=False)
    out = tmp_path / "run"
    code = main(["compress", str(tmp_path / "mlp"), "--data", "digits", "--method", "prune-structured",
                 "--options", '{"prune-structured": {"attribution_weight": -1}}', "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "attribution_weight" in captured.err
    assert not out.exists()
