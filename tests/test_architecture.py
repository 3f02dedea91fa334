"""The shape of the house, checked from the source: one-way imports, no cycles, thin commands, no process words.

Read with `ast` (nothing is imported), so a violation fails here whatever the tests import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainers", "compress", "explain", "reports", "cli")
# What each package may import of the others (at module level or inside functions).
ALLOWED = {
    "trainers": set(),
    "compress": {"trainers", "explain"},
    "explain": {"trainers", "compress"},
    "reports": {"trainers", "compress", "explain"},
    "cli": {"trainers", "compress", "explain", "reports"},
}
CLI_MAX_LINES = 120


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    """Project modules `name` imports (resolved relative imports), at module level only or anywhere."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return {m for m in found if m in MODULES and m != name}


def test_no_import_cycle_at_module_level():
    graph = {name: _imports(name, path, top_level_only=True) for name, path in MODULES.items()}
    # a package importing its own submodules is how packages are built, not a cycle
    graph = {name: {m for m in deps if not m.startswith(name + ".")} for name, deps in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node, stack):
        visiting.add(node)
        for dep in graph[node]:
            if dep in visiting:
                cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [node, dep])
            elif dep not in done:
                visit(dep, stack + [dep])
        visiting.discard(node)
        done.add(node)

    for name in graph:
        if name not in done:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    wrong = []
    for name, path in MODULES.items():
        if name.split(".")[0] != package:
            continue
        for dep in _imports(name, path, top_level_only=False):
            if dep.split(".")[0] not in ALLOWED[package] | {package}:
                wrong.append(f"{name} imports {dep}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package, other", [("compress", "explain"), ("explain", "compress")])
def test_compress_and_explain_use_each_other_through_public_names_only(package, other):
    """DESIGN: compress/ and explain/ use each other only through their public functions, the names their
    `__init__` exports (`__all__`): never a submodule of the other."""
    import importlib

    public = set(importlib.import_module(other).__all__)
    wrong = []
    for name, path in MODULES.items():
        if name.split(".")[0] != package:
            continue
        wrong += [f"{name} imports {dep}" for dep in _imports(name, path, top_level_only=False)
                  if dep.startswith(other + ".")]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == other and not node.level:
                wrong += [f"{name} imports {other}.{a.name}, not public" for a in node.names if a.name not in public]
    assert not wrong, "\n".join(wrong)


def test_report_renderer_reads_files_only():
    """Rendering imports no stage: it reads what the stages wrote (the pipeline and its config run them)."""
    for name, path in MODULES.items():
        if name.startswith("reports") and name not in ("reports.pipeline", "reports.config"):
            stages = {d.split(".")[0] for d in _imports(name, path, top_level_only=False)} - {"reports", "trainers"}
            assert not stages, f"{name} imports {stages}"


def test_command_modules_are_thin():
    sizes = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in (ROOT / "cli").glob("*.py")}
    assert all(n <= CLI_MAX_LINES for n in sizes.values()), sizes


def test_no_process_words_in_code_or_tests():
    pattern = re.compile(r"\bissue[- ]?#?\d+|\bissues? \d", re.IGNORECASE)
    hits = []
    for folder in (*PACKAGES, "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert not hits, "\n".join(hits)
