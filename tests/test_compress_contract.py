"""Every registered compression method keeps the contract of `compress.checks`, on every family it declares."""

from __future__ import annotations

import pytest

from compress import list_methods, method_checks

# Fast options per method, so the whole table runs in a minute or two on 2 cores.
FAST = {
    "prune-structured": {"finetune_epochs": 1},
    "prune-unstructured": {"finetune_epochs": 1},
    "int8-static": {"latency_rounds": 0},  # untimed: the choice depends on the seed alone
    "distill": {"epochs": 1, "mixup": 0.0, "batch_size": 256},
    "lowrank": {"agreement": 0.8, "max_cost": 0.95, "align": 2},  # the tiny models' layers are 2-16 wide
}
# auto measures latencies of a dozen candidates: test_compress.py runs it end to end
CHECKS = [check for name in list_methods() if name != "auto" for check in method_checks(name, FAST.get(name))]


@pytest.mark.parametrize("check", CHECKS, ids=str)
def test_method_contract(check):
    check()


def test_every_method_but_auto_is_checked():
    assert {str(c).split(":")[0] for c in CHECKS} == set(list_methods()) - {"auto"}
