"""Lazy package exports (PEP 562), shared by `trainers`, `compress` and `explain`.

`import trainers` must not import torch (so `toolkit --help` stays fast); each
public name is imported from its submodule on first use and then cached in the
package's namespace.
"""

from __future__ import annotations

from importlib import import_module
from typing import Callable


def lazy_exports(package: str, namespace: dict, exports: dict[str, tuple[str, ...]],
                 before: Callable[[], object] | None = None):
    """(`__getattr__`, `__dir__`, names) for `package` whose submodule `m` exports `exports[m]`.

    `before` runs once before the first lazy import (e.g. to register plug-in modules).
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name):
        if name not in where:
            raise AttributeError(f"module '{package}' has no attribute {name!r}")
        if before is not None:
            before()
        value = getattr(import_module(f".{where[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace.get("__all__", ())) | set(where))

    return __getattr__, __dir__, list(where)
