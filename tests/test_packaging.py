"""The package as installed: same-named folders in the working directory are refused at start-up, and the
project metadata declares what a clean install needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def run_cli(cwd: Path, *args):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


@pytest.mark.parametrize("name", ["reports", "compress", "trainers"])
def test_a_same_named_package_in_the_working_directory_is_one_line(tmp_path, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("print('the user package ran')\n")
    done = run_cli(tmp_path, "report", str(tmp_path))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"'{name}' is imported from {tmp_path / name}" in lines[0] and "rename it" in lines[0]
    assert "the user package ran" not in done.stdout


def test_a_plain_folder_of_that_name_does_not_hide_the_package(tmp_path):
    (tmp_path / "reports").mkdir()  # no __init__.py: a namespace portion, which a regular package outranks
    done = run_cli(tmp_path, "report", str(tmp_path / "missing"))
    assert done.returncode == 2 and done.stderr.strip() == f"error: run directory not found: {tmp_path / 'missing'}"


def test_project_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").is_file() and project["license-files"] == ["LICENSE"]
    assert "tomli>=2; python_version < '3.11'" in project["dependencies"]
    extras = project["optional-dependencies"]
    assert {name.split(">")[0] for name in extras["tracking"]} == {"mlflow", "tensorboard"}
    assert set(extras["tracking"]) <= set(extras["dev"])


def test_the_tracking_install_hint_installs_the_tracking_extra():
    """The missing-package messages give a pip command for the extra's own requirements: `toolkit[tracking]` would
    fetch the unrelated `toolkit` of the public index (README's install line says the same)."""
    from trainers.tracking import install_hint

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tracking"]
    hints = [install_hint(name) for name in ("mlflow", "tensorboard")]
    assert hints == [f"pip install '{requirement}'" for requirement in extra]
    readme = (ROOT / "README.md").read_text()
    assert "toolkit[" not in readme and "pip install " + " ".join(f"'{r}'" for r in extra) in readme
