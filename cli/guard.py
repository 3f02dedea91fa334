"""A start-up check that the toolkit runs its own packages, not same-named folders found first on `sys.path`.

The top-level packages have generic names (`reports`, `compress`, ...). Python looks in the working directory
(`python -m`, a notebook) and on PYTHONPATH before the installed packages, so a user's own `reports/` package
there would be imported instead and fail somewhere deep with a confusing error. `check_own_packages` finds each
package without importing it and stops with one line naming the folder that hides it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGES = ("trainers", "compress", "explain", "reports", "cli")


def foreign_package() -> tuple[str, str] | None:
    """(name, location) of the first package that Python would import from outside this installation, if any."""
    home = Path(__file__).resolve().parent.parent
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not any(Path(place).resolve().parent == home for place in locations):
            return name, locations[0] if locations else (spec.origin if spec else "nowhere")
    return None


def check_own_packages() -> None:
    """Exit with code 2 and one line on stderr when a package of the toolkit is hidden by another."""
    found = foreign_package()
    if found is not None:
        name, where = found
        print(f"error: the package '{name}' is imported from {where}, not from the toolkit's installation "
              f"({Path(__file__).resolve().parent.parent}); a folder named '{name}' in the working directory or on "
              f"PYTHONPATH hides it: rename it or run toolkit from another directory", file=sys.stderr)
        raise SystemExit(2)
