"""The worked examples of README.md's `## Extending`: each code block, written to a module and imported, registers
an entry that passes the contract suite of its registry; the entry is unregistered afterwards."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(subsection: str) -> str:
    """The first python code block under `### {subsection}` of README.md."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n### {subsection}\n")
    end = min(i for i in (text.find("\n### ", start + 1), text.find("\n## ", start + 1), len(text)) if i != -1)
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    assert blocks, f"no python block under ### {subsection}"
    return blocks[0]


def import_block(code: str, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.py"
    path.write_text(code, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)


@pytest.fixture
def registered(tmp_path):
    """Import a README block and yield the names it registered in `registry`; unregister them afterwards."""
    added = []

    def register(subsection: str, registry) -> list[str]:
        before = set(registry.names())
        import_block(readme_block(subsection), f"readme_{len(added)}", tmp_path)
        names = [n for n in registry.names() if n not in before]
        added.extend((registry, n) for n in names)
        return names

    yield register
    for registry, name in added:
        registry.unregister(name)


def test_readme_explanation_method_passes_the_contract(registered):
    import explain
    from explain.checks import check_explain_method, fitted_model
    from explain.registry import METHODS

    assert registered("An explanation method", METHODS) == ["gradient_x_input"]
    check_explain_method("gradient_x_input")
    model = fitted_model("mlp")
    attr = explain.attribute(model, np.ones((2, *model.spec.input_shape), np.float32), 0, "gradient_x_input",
                             magnitude=True)
    assert (attr.values >= 0).all() and attr.values.any()
    assert "gradient_x_input" not in explain.default_methods("mlp")


def test_readme_model_family_passes_the_contract(registered):
    from explain.checks import check_runs_on_declared_families
    from trainers import TrainConfig, list_models, train
    from trainers.checks import check_model_family
    from trainers.models import FAMILIES

    assert registered("A model family", FAMILIES) == ["gru"]
    assert "gru" in list_models()
    check_model_family("gru")
    check_runs_on_declared_families("integrated_gradients", {"n_steps": 16})   # the new family included
    result = train("iris", "gru", TrainConfig(epochs=1, model={"hidden": 8}), progress=False)
    assert result.model.spec.family == "gru" and result.model.spec.config == {"hidden": 8, "bidirectional": False}


def test_readme_blocks_are_unregistered_afterwards():
    from explain.registry import list_methods
    from trainers import list_models

    assert "gradient_x_input" not in list_methods() and "gru" not in list_models()
