"""The docs' tables of registered entries are generated from the registries, so they cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs" / "results.md"


def _tables() -> dict[str, str]:
    import compress
    import explain
    from compress.base import METHODS as COMPRESSION
    from explain.registry import METHODS as EXPLAINERS
    from trainers.models import FAMILIES

    compress.list_methods()
    explain.list_methods()
    return {"model families": FAMILIES.table(skip=("refusal", "families", "needs", "excludes")),
            "compression methods": COMPRESSION.table(),
            "explain methods": EXPLAINERS.table()}


@pytest.mark.parametrize("kind", ["model families", "compression methods", "explain methods"])
def test_docs_table_matches_the_registry(kind):
    table = _tables()[kind]
    assert table in DOCS.read_text(encoding="utf-8"), (
        f"docs/results.md's table of {kind} differs from the registry; replace it with:\n\n{table}\n")


def test_readme_names_every_registered_method():
    import compress
    import explain

    readme = (DOCS.parents[1] / "README.md").read_text(encoding="utf-8")
    missing = [name for name in compress.list_methods() + explain.list_methods() if name not in readme]
    assert not missing, f"README.md does not mention: {', '.join(missing)}"
