"""Shared test configuration: data fixtures every test module uses, a stand-in compression method registered
for one test, and the skip of `gpu` tests without CUDA."""

from __future__ import annotations

import pytest


def pytest_sessionstart(session):
    """Register the built-in compression methods in their package's order before a test module imports one of
    their modules directly: the registry keeps registration order, and auto's plan and the docs tables follow it."""
    import compress

    compress.register_builtin_methods()


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def digits():
    """The built-in digits set (1x8x8 images, 10 classes), loaded once for the whole run."""
    from trainers import load_data

    return load_data("digits")


@pytest.fixture(scope="session")
def iris():
    """The built-in iris set (4 features, 3 classes), loaded once for the whole run."""
    from trainers import load_data

    return load_data("iris")


@pytest.fixture
def stand_in():
    """`stand_in(name, func=f, **capabilities)` registers `f` as compression method `name` (as
    `compress.base.register_method` does); every one registered is unregistered after the test."""
    from compress.base import METHODS, register_method

    names = []

    def register(name, func, **capabilities):
        register_method(name, **capabilities)(func)
        names.append(name)

    yield register
    for name in names:
        METHODS.unregister(name)
