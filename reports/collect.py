"""Find and read what the stages wrote in a run directory (JSON and figure files only).

A run directory is either one stage's output (`result.json`) or a pipeline directory with `train/`,
`compress/`, `explain/` subdirectories and an optional `pipeline.json` (stage statuses and errors, written
by `toolkit pipeline`). Results are read through `trainers.schema`, so every section reads typed fields;
a result of an unknown schema version, or one that does not match its schema, is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from trainers import fileio
from trainers.artifact import parent_checksum
from trainers.errors import ToolkitError, warn
from trainers.schema import (CompressResultFile, CompressResultFileV1, CompressResultFileV2, CompressResultFileV3, CompressResultFileV4, DataSummary, ExplainResultFile, PipelineFile, ResultFile,
                             TrainResultFile, TrainResultFileV1, read_result)

STAGES = ("train", "compress", "explain")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReportError(ToolkitError):
    """The run directory cannot be reported on (missing, unreadable or invalid results). Bad input: exit code 2."""


@dataclass
class Run:
    """Everything read from a run directory: typed results, and the other JSON files as plain data."""

    root: Path
    train: TrainResultFile | TrainResultFileV1 | None = None
    compress: CompressResultFile | CompressResultFileV4 | CompressResultFileV3 | CompressResultFileV2 | CompressResultFileV1 | None = None
    explain: ExplainResultFile | None = None
    pipeline: PipelineFile | None = None
    dirs: dict[str, Path] = field(default_factory=dict)  # stage -> its directory
    configs: dict[str, dict] = field(default_factory=dict)  # stage -> config.json
    env: dict = field(default_factory=dict)
    model_json: dict = field(default_factory=dict)  # the trained model's model.json
    model_metrics: dict = field(default_factory=dict)  # the trained model's metrics.json
    pipeline_config: dict = field(default_factory=dict)  # the pipeline's resolved config.json
    replaced: str | None = None  # why the model a compress run names is no longer the one it compressed

    @property
    def results(self) -> dict[str, ResultFile]:
        """The stage results present, in stage order."""
        return {s: getattr(self, s) for s in STAGES if getattr(self, s) is not None}

    @property
    def is_pipeline(self) -> bool:
        return self.pipeline is not None or any(d != self.root for d in self.dirs.values())

    @property
    def data(self) -> DataSummary | None:
        """The data the stages ran on (every stage result records it)."""
        return next((r.data for r in self.results.values()), None)

    @property
    def family(self) -> str | None:
        first = next(iter(self.results.values()), None)
        return first.family if first else self.pipeline.family if self.pipeline else None


def read_json(path: Path, what: str) -> dict:
    """A JSON object from a file other than a result (config, env, model); `{}` when absent."""
    if not path.is_file():
        return {}
    try:
        return fileio.read_json(path, what, constants_as_none=True)
    except ToolkitError as exc:
        raise ReportError(str(exc)) from None


def _result(path: Path, stage: str | None = None) -> ResultFile:
    try:
        result = read_result(path, stage)
    except ToolkitError as exc:
        raise ReportError(str(exc)) from None
    if result.stage not in STAGES and stage is None:
        raise ReportError(f"{path} holds a {result.stage} status, not a stage result")
    return result


def load_run(run_dir: str | Path) -> Run:
    """Read a single-stage or pipeline run directory.

    Raises:
        ReportError: the directory does not exist, holds no stage results, or a result is unreadable,
            of an unknown schema version, or does not match its schema.
    """
    root = Path(run_dir)
    if not root.exists():
        raise ReportError(f"run directory not found: {root}")
    if not root.is_dir():
        raise ReportError(f"not a run directory (expected a directory): {root}")
    run = Run(root=root)
    if (root / "result.json").is_file():
        result = _result(root / "result.json")
        setattr(run, result.stage, result)
        run.dirs[result.stage] = root
        run.configs[result.stage] = read_json(root / "config.json", "config file")
    else:
        if (root / "pipeline.json").is_file():
            run.pipeline = _result(root / "pipeline.json", "pipeline")
        run.pipeline_config = read_json(root / "config.json", "config file")
        for stage in STAGES:
            sub = root / stage
            if (sub / "result.json").is_file():
                setattr(run, stage, _result(sub / "result.json", stage))
                run.dirs[stage] = sub
                run.configs[stage] = read_json(sub / "config.json", f"{stage} config file")
        if not run.results and run.pipeline is None:
            raise ReportError(f"no results in {root}: expected result.json, or train/, compress/ or explain/ "
                              "subdirectories holding one (is this a run directory?)")
    for directory in run.dirs.values():
        if not run.env:
            run.env = _environment(read_json(directory / "env.json", "environment file"))
    if "train" in run.dirs:
        run.model_json = _model_file(run.dirs["train"] / "model.json")
        run.model_metrics = read_json(run.dirs["train"] / "metrics.json", "model metrics file")
    else:
        run.model_json = _named_model(run)
        if run.replaced:  # the page and card say it too (the overview, the caveats)
            warn(run.replaced)
    return run


def _named_model(run: Run) -> dict:
    """A compress or explain run's model.json, from the model its result names (its classes and architecture
    for the card); {} when that model is an ONNX file, gone, or unreadable: the report does not depend on it.
    Also {} when it is no longer the model the compress run compressed (`_replaced_parent`): its architecture and
    training beside the variants' numbers described two models as one."""
    for stage, field_ in (("compress", "parent"), ("explain", "model")):
        named = getattr(getattr(run, stage), field_, None)
        if stage in run.dirs and isinstance(named, str) and named:
            path = Path(named) if Path(named).is_absolute() else run.dirs[stage] / named
            try:
                model = _model_file(path / "model.json") if (path / "model.json").is_file() else {}
            except (ReportError, OSError):
                return {}
            if stage == "compress" and model:
                run.replaced = _replaced_parent(run, named, model)
            return {} if run.replaced else model
    return {}


def _replaced_parent(run: Run, named: str, model: dict) -> str | None:
    """Why the model now at `named` is not the one the compress run compressed, or None: each variant records the
    checksum of its parent's weights (`parent_sha256`, as `explain --compare` checks), and a `train --overwrite`
    there since gives another."""
    ours = parent_checksum(model.get("weights"), model.get("onnx"))
    for row in run.compress.variants:
        lineage = _variant_lineage(run.dirs["compress"], row.path)
        recorded = lineage.get("parent_sha256")
        if isinstance(recorded, str) and isinstance(ours, str) and recorded != ours:
            return (f"the model at {named} has been replaced since this run: its variants were compressed from "
                    f"weights of checksum {recorded[:12]}, the model there now has {ours[:12]}; that model's "
                    "architecture and training are left out of this report")
    return None


def _variant_lineage(directory: Path, path: str | None) -> dict:
    """The `lineage` a variant's model.json records, or {} where there is none to read."""
    if not path:
        return {}
    try:
        lineage = read_json((directory / path) / "model.json", "variant model file").get("lineage")
    except (ReportError, OSError):
        return {}
    return lineage if isinstance(lineage, dict) else {}


# env.json's fields the report shows, with the type each must have; a field of another type is left out
_ENV_TYPES = {"versions": dict, "gpus": list, "device": str, "platform": str, "python": str, "cpu_count": int}


def _environment(env: dict) -> dict:
    """env.json's fields of the expected types (`_ENV_TYPES`): the file is informative, so a malformed field is
    left out of the report rather than refused; versions keep their text entries."""
    kept = {k: v for k, v in env.items() if k in _ENV_TYPES and isinstance(v, _ENV_TYPES[k])}
    if "versions" in kept:
        kept["versions"] = {str(k): v for k, v in kept["versions"].items() if v is None or isinstance(v, (str, int, float))}
    return kept


def _model_file(path: Path) -> dict:
    """The trained model's model.json, its fields the report reads checked for their types (one line if one is
    of another type: sections read them as objects and lists)."""
    raw = read_json(path, "model file")
    for key in ("config", "preprocessing", "training", "data", "versions", "lineage", "weights", "onnx"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ReportError(f"{path}: '{key}' must be an object, got {type(raw[key]).__name__}")
    for key in ("class_names", "feature_names", "input_shape"):
        if raw.get(key) is not None and not isinstance(raw[key], list):
            raise ReportError(f"{path}: '{key}' must be a list, got {type(raw[key]).__name__}")
    return raw


def image_file(directory: Path, name: str) -> bytes | None:
    """The bytes of a PNG figure named by a stage, or None when missing, not a PNG, or outside `directory`."""
    if not name:
        return None
    base = directory.resolve()
    try:
        path = (directory / name).resolve()
        path.relative_to(base)
    except (OSError, ValueError):
        return None
    if not path.is_file():
        return None
    data = path.read_bytes()
    return data if data.startswith(PNG_MAGIC) else None


def number(value) -> float | None:
    """A finite float, or None for anything else (missing values, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
