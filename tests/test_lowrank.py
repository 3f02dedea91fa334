"""Low-rank factorization (`compress.lowrank`) and the agreement target auto gives a method chained onto it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from compress import compress_model, get_method
from compress.auto import Screen
from compress.lowrank import _cost, _gather, _pair, _Statistics, factorize
from trainers import ToolkitError, TrainConfig, load_model, predict, train
from trainers.models import count_parameters


@pytest.fixture(scope="module")
def mlp(digits):
    return train(digits, "mlp", TrainConfig(epochs=6, model={"hidden": [128, 64]}, device="cpu"), progress=False).model


@pytest.fixture(scope="module")
def cnn(digits):
    return train(digits, "cnn", TrainConfig(epochs=4, model={"channels": [16, 32], "hidden": [64]}, device="cpu"),
                 progress=False).model


@pytest.mark.parametrize("layer", [nn.Linear(12, 10), nn.Conv1d(6, 10, 3, padding=1, stride=2),
                                   nn.Conv2d(4, 10, (3, 2), padding=(1, 0), dilation=(2, 1))],
                         ids=["linear", "conv1d", "conv2d"])
def test_the_pair_at_full_rank_computes_the_layer(layer):
    """The least-squares fit recovers a layer from its own inputs and responses, and the pair through every
    principal direction computes it again: the patches, the fit and the pair's shapes are all right."""
    torch.manual_seed(0)
    shape = {nn.Linear: (300, 12), nn.Conv1d: (40, 6, 9), nn.Conv2d: (30, 4, 7, 6)}[type(layer)]
    x = torch.randn(*shape)
    holder = nn.Sequential(layer).eval()
    stats = _gather(holder, holder, "0", x.numpy())
    weight, bias, mean, covariance = stats.fit()
    _, vectors = torch.linalg.eigh(covariance)
    pair = _pair(layer, weight, bias, vectors, mean)
    with torch.no_grad():
        torch.testing.assert_close(pair(x), layer(x), atol=2e-3, rtol=1e-3)
    half = _pair(layer, weight, bias, vectors[:, -5:], mean)
    assert half[0].weight.shape[0] == 5 and half[1].weight.shape[1] == 5
    with torch.no_grad():
        assert not torch.allclose(half(x), layer(x), atol=1e-2)  # rank 5 of 10 loses something on random weights


def test_statistics_add_up_in_chunks():
    x, y = torch.randn(50, 4), torch.randn(50, 3)
    one, two = _Statistics(), _Statistics()
    one.add(x, y)
    two.add(x[:20], y[:20])
    two.add(x[20:], y[20:])
    torch.testing.assert_close(one.xx, two.xx)
    torch.testing.assert_close(one.xy, two.xy)


def test_lowrank_keeps_the_validation_agreement_it_promises(mlp, digits):
    before = {k: v.clone() for k, v in mlp.module.state_dict().items()}
    module, done, agreed = factorize(mlp.module, digits, agreement=0.98, max_cost=0.6, align=8,
                                     calibration_samples=512)
    assert done, "the 128-unit layers of a digits MLP have low-rank responses"
    for f in done:
        assert f.rank % 8 == 0 and f.cost <= 0.6
        assert f.cost == pytest.approx(_cost(mlp.module.get_submodule(f.name), f.rank))
    reference = predict(mlp.module, digits.x_val).argmax(1)
    measured = float((predict(module, digits.x_val).argmax(1) == reference).mean())
    assert measured == pytest.approx(agreed) and measured >= 0.98
    assert count_parameters(module) < count_parameters(mlp.module)
    after = mlp.module.state_dict()  # the original is left as it was
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_stricter_target_keeps_more_rank(mlp, digits):
    ranks = {}
    for target in (0.9, 0.995):
        _, done, _ = factorize(mlp.module, digits, agreement=target, max_cost=0.9, align=8, calibration_samples=512)
        ranks[target] = sum(f.rank for f in done) + 1000 * (len(mlp.module.features) - len(done))
    assert ranks[0.9] <= ranks[0.995]


def test_headroom_raises_a_layers_rank_a_rung_above_the_smallest_reaching_its_target(mlp, digits):
    """A validation split the model was trained on (a refit) agrees at every rank; the fallback's headroom takes
    the next rank of each layer's ladder, and the agreement it reports is the one measured at that rank."""
    from compress.lowrank import _ranks

    _, plain, _ = factorize(mlp.module, digits, agreement=0.98, max_cost=0.6, align=8, calibration_samples=512)
    module, raised, agreed = factorize(mlp.module, digits, agreement=0.98, max_cost=0.6, align=8,
                                       calibration_samples=512, headroom=1)
    first = plain[0]
    ladder = _ranks(mlp.module.get_submodule(first.name), 8, 0.6)
    assert raised[0].name == first.name and raised[0].rank == ladder[min(ladder.index(first.rank) + 1, len(ladder) - 1)]
    assert raised[0].rank > first.rank, "a 128-unit layer's ladder goes past the rank a digits MLP needs"
    reference = predict(mlp.module, digits.x_val).argmax(1)
    assert agreed == pytest.approx(float((predict(module, digits.x_val).argmax(1) == reference).mean()))
    variant = get_method("lowrank").func(mlp, digits, agreement=0.98, headroom=1)[0]
    assert variant.name == "lowrank-98-up1" and variant.recipe["headroom"] == 1


def test_lowrank_variant_saves_loads_and_predicts_as_in_memory(cnn, digits, tmp_path):
    """A factorized CNN (Conv2d and Linear) goes through the method's one call shape; its ranks go into the
    family's config, so it is saved as PyTorch weights and rebuilt to the same predictions."""
    result = compress_model(cnn, digits, methods=["lowrank"], options={"lowrank": {"agreement": 0.95, "max_cost": 0.9}},
                            out=tmp_path / "c")
    variant = next(v for v in result.variants if v.name.startswith("lowrank"))
    assert variant.recipe["ranks"] and all(r % 8 == 0 for r in variant.recipe["ranks"].values())
    loaded = load_model(tmp_path / "c" / "variants" / variant.name)
    assert loaded.spec.runtime == "torch" and loaded.spec.config["ranks"] == variant.recipe["ranks"]
    np.testing.assert_allclose(predict(loaded, digits.x_test), predict(variant.model.module, digits.x_test),
                               atol=1e-4, rtol=1e-4)


def test_lowrank_refuses_what_it_cannot_do(mlp, digits):
    no_val = dataclasses.replace(digits, x_val=digits.x_val[:0], y_val=digits.y_val[:0])
    with pytest.raises(ToolkitError, match="validation split"):
        get_method("lowrank").func(mlp, no_val)
    with pytest.raises(ToolkitError, match="found no layer"):
        get_method("lowrank").func(mlp, digits, max_cost=0.01)
    with pytest.raises(ToolkitError):
        get_method("lowrank").func(mlp, digits, agreement=1.5)
    with pytest.raises(ToolkitError):
        get_method("lowrank").func(mlp, digits, headroom=-1)


def test_a_layer_too_wide_to_fit_in_memory_is_left_as_it_is(mlp, digits, monkeypatch):
    """The fit's Gram matrix grows with the square of a layer's inputs: layers over MAX_FAN are not factorized."""
    import compress.lowrank as lowrank

    _, done, _ = factorize(mlp.module, digits, agreement=0.9, max_cost=0.9, align=8, calibration_samples=256)
    assert {f.name for f in done} & {"features.0", "features.3"}  # 64->128 and 128->64 factorize
    monkeypatch.setattr(lowrank, "MAX_FAN", 100)
    _, done, _ = factorize(mlp.module, digits, agreement=0.9, max_cost=0.9, align=8, calibration_samples=256)
    assert not {f.name for f in done} & {"features.0", "features.3"}  # each has 128 inputs or outputs


class _Flip(nn.Module):
    """`base` with the predictions of the first `n` rows moved to another class."""

    def __init__(self, base, n):
        super().__init__()
        self.base, self.n = base, n

    def forward(self, x):
        out = self.base(x).clone()
        out[: self.n] = out[: self.n].roll(1, dims=1)
        return out


def test_a_chained_runtime_method_gets_the_room_the_transform_left(mlp, digits):
    screen = Screen.__new__(Screen)
    screen.data, screen.min_agreement, screen.original, screen._val_classes = digits, 0.97, mlp.module, None
    n = len(digits.x_val)
    assert screen.chained("int8-static", mlp.module) == {"min_agreement": 0.97}
    # one row in 216 used: 0.46% of the 3%, int8 aims for 1 - (3% - 0.46%)
    got = screen.chained("int8-dynamic", _Flip(mlp.module, 1))["min_agreement"]
    assert got == pytest.approx(round(1 - (0.03 - 1 / n), 4))
    assert screen.chained("int8-static", _Flip(mlp.module, n // 10)) == {}  # room used up: int8's own 99.5%
    assert screen.chained("onnx-fp32", mlp.module) == {}  # no agreement option to give


def test_a_users_module_is_factorized_and_saved_as_onnx(digits, tmp_path):
    """A module of the user's own class cannot be rebuilt at other shapes: its factorized variant is saved as
    ONNX, and the graph computes what the factorized module does."""
    import trainers

    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10))
    x, y = torch.from_numpy(digits.x_train).float(), torch.from_numpy(digits.y_train).long()
    optimizer = torch.optim.Adam(module.parameters(), 1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(module(x), y).backward()
        optimizer.step()
    model = trainers.as_model(module.eval(), digits)
    result = compress_model(model, digits, methods=["lowrank"], options={"lowrank": {"agreement": 0.95}},
                            out=tmp_path / "u")
    variant = next(v for v in result.variants if v.name.startswith("lowrank"))
    loaded = load_model(tmp_path / "u" / "variants" / variant.name)
    assert loaded.spec.runtime == "onnxruntime"
    np.testing.assert_allclose(predict(loaded, digits.x_test), predict(variant.model.module, digits.x_test),
                               atol=1e-4, rtol=1e-4)
