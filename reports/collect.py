"""Find and read what the stages wrote in a run directory (JSON and figure files only).

A run directory is either one stage's output (`result.json` with a `stage` key)
or a pipeline directory with `train/`, `compress/`, `explain/` subdirectories and
an optional `pipeline.json` (stage statuses and errors, written by `toolkit pipeline`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("train", "compress", "explain")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReportError(Exception):
    """The run directory cannot be reported on (missing or unreadable results). Bad input: exit code 2."""


@dataclass
class Run:
    """Everything read from a run directory, as plain data."""

    root: Path
    results: dict[str, dict] = field(default_factory=dict)  # stage -> result.json
    dirs: dict[str, Path] = field(default_factory=dict)  # stage -> its directory
    configs: dict[str, dict] = field(default_factory=dict)  # stage -> config.json
    env: dict = field(default_factory=dict)
    model_json: dict = field(default_factory=dict)  # the trained model's model.json
    model_metrics: dict = field(default_factory=dict)  # the trained model's metrics.json
    pipeline: dict = field(default_factory=dict)  # pipeline.json, when a pipeline wrote it
    pipeline_config: dict = field(default_factory=dict)  # the pipeline's resolved config.json

    @property
    def is_pipeline(self) -> bool:
        return bool(self.pipeline) or any(self.dirs.get(s) != self.root for s in self.dirs)


def read_json(path: Path, what: str, required: bool = False) -> dict:
    """A JSON object from `path`; `{}` when absent and not required; ReportError when unreadable."""
    if not path.is_file():
        if required:
            raise ReportError(f"{what} not found: {path}")
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda name: None)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise ReportError(f"{what} {path} does not hold a JSON object")
    return obj


def load_run(run_dir: str | Path) -> Run:
    """Read a single-stage or pipeline run directory.

    Raises:
        ReportError: the directory does not exist or holds no stage results.
    """
    root = Path(run_dir)
    if not root.exists():
        raise ReportError(f"run directory not found: {root}")
    if not root.is_dir():
        raise ReportError(f"not a run directory (expected a directory): {root}")
    run = Run(root=root)
    own = read_json(root / "result.json", "result file")
    if own:
        stage = str(own.get("stage") or "train")
        run.results[stage], run.dirs[stage] = own, root
        run.configs[stage] = read_json(root / "config.json", "config file")
    else:
        run.pipeline = read_json(root / "pipeline.json", "pipeline status file")
        run.pipeline_config = read_json(root / "config.json", "config file")
        for stage in STAGES:
            sub = root / stage
            result = read_json(sub / "result.json", f"{stage} result file")
            if result:
                run.results[stage], run.dirs[stage] = result, sub
                run.configs[stage] = read_json(sub / "config.json", f"{stage} config file")
        if not run.results and not run.pipeline:
            raise ReportError(f"no results in {root}: expected result.json, or train/, compress/ or explain/ "
                              "subdirectories holding one (is this a run directory?)")
    for stage, directory in run.dirs.items():
        if not run.env:
            run.env = read_json(directory / "env.json", "environment file")
    if "train" in run.dirs:
        run.model_json = read_json(run.dirs["train"] / "model.json", "model file")
        run.model_metrics = read_json(run.dirs["train"] / "metrics.json", "model metrics file")
    return run


def image_file(directory: Path, name: str) -> bytes | None:
    """The bytes of a PNG figure named by a stage, or None when missing, not a PNG, or outside `directory`."""
    if not isinstance(name, str) or not name:
        return None
    base = directory.resolve()
    for candidate in (directory / name, directory / "figures" / name):
        try:
            path = candidate.resolve()
            path.relative_to(base)
        except (OSError, ValueError):
            continue
        if path.is_file():
            data = path.read_bytes()
            return data if data.startswith(PNG_MAGIC) else None
    return None


def number(value) -> float | None:
    """A finite float, or None for anything else (missing keys, strings, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def dig(obj, *keys, default=None):
    """obj[k1][k2]... tolerating missing keys and wrong types at every level."""
    for key in keys:
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return default
    return obj


def first(obj: dict, *names, default=None):
    """The first of several candidate keys present in `obj` (schemas name things differently)."""
    if not isinstance(obj, dict):
        return default
    for name in names:
        value = dig(obj, *name.split(".")) if "." in name else obj.get(name)
        if value is not None:
            return value
    return default
