"""The worked examples of README.md's `## Extending` section run as written."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from compress import METHODS, list_methods, method_checks

README = Path(__file__).resolve().parents[1] / "README.md"


def _example(heading: str) -> str:
    """The first python code block under `heading` in README.md."""
    text = README.read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def example_method(tmp_path):
    """Import the README's compression method from a file of its own; unregister it afterwards."""
    path = tmp_path / "readme_compression_method.py"
    path.write_text(_example("### A compression method"))
    before = set(list_methods())
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
        added = sorted(set(list_methods()) - before)
        yield added
    finally:
        for name in set(list_methods()) - before:
            METHODS.unregister(name)
        sys.modules.pop(path.stem, None)


def test_readme_compression_method_keeps_the_contract(example_method):
    assert example_method == ["prune-head"]
    checks = list(method_checks("prune-head"))
    assert len(checks) > 5
    for check in checks:
        try:
            check()
        except AssertionError as exc:
            raise AssertionError(f"{check}: {exc}") from None
