"""A training state as JSON plus tensors (`trainers.statetree`), read back exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trainers.statetree import flatten, unflatten

def _same(a, b) -> bool:
    """Equal with the same types all the way down, nan equal to nan, tensors equal bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        bits = [t.reshape(-1).view(torch.uint8) for t in (a, b)]
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(*bits)
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(type(k) is type(j) for k, j in zip(a, b)) and all(
            _same(a[k], b[k]) for k in a)
    return a == b


def test_an_optimizer_state_round_trips_exactly_through_json_and_tensors():
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tree = {"optimizer": optimizer.state_dict(),  # int keys, tuples (betas), 0-dim tensors, None
            "odd": {"inf": math.inf, "-inf": -math.inf, "nan": math.nan, "zero": -0.0, "tiny": 5e-324,
                    "third": 1 / 3, "big": 2**70, "flag": True, (1, "a"): None, 2.5: [(), []]},
            "tensors": [torch.tensor([1.5, -0.0], dtype=torch.bfloat16), torch.zeros(0, 3, dtype=torch.int64)]}
    encoded, tensors = flatten(tree)
    text = json.dumps(encoded, allow_nan=False)  # strict JSON: no NaN or Infinity tokens
    assert _same(unflatten(json.loads(text), tensors), tree)


@pytest.mark.parametrize("encoded", [{"tensor": "t9"}, {"pickle": "x"}, {"dict": [1]}, {"items": [[[1], 2]]},
                                     {"float": "1e999"}, {"a": 1, "b": 2}])
def test_a_state_no_flatten_wrote_is_a_value_error(encoded):
    with pytest.raises(ValueError):
        unflatten({"dict": {"x": encoded}}, {})
