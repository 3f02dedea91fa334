"""The pipeline's configuration: one section per stage, each section that stage's own options dataclass.

Every default, type and bound lives in the stage's dataclass (`TrainConfig`, `CompressOptions`,
`ExplainOptions`, `ReportOptions`); a config file only overrides them, and command-line options override
the file. A bad value is one `ToolkitError` line naming `section.key` (`trainers.options.parse`).
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Annotated

from pydantic import AfterValidator, Field, Strict, TypeAdapter

from compress.options import CompressOptions
from explain.options import ExplainOptions
from trainers.errors import ToolkitError
from trainers.fileio import atomic_write_json, atomic_write_text, check_regular_file
from trainers.trainconfig import TrainConfig
from trainers.images import IMAGE_SIZE_RANGE
from trainers.options import FORBID_EXTRA, Str, parse
from trainers.tracking import TrackingOptions

# A configuration is a few hundred bytes; the pipeline's own config.yaml about 2 KB. The cap keeps a file that is
# not one (a log, a data file given by mistake) from being parsed into memory.
MAX_CONFIG_BYTES = 1 << 20

# Keys of a saved config.json that describe the run rather than configure it; dropped when it is loaded again.
RUN_KEYS = ("stage", "data", "family", "command")


# What the pipeline itself writes in its run directory: the report may not take one of these names.
PIPELINE_FILES = ("train", "compress", "explain", "pipeline.json", "config.json", "config.yaml", "env.json",
                  "MODEL_CARD.md", ".toolkit-run.json")

# The numbers `toolkit report RUN` writes beside its default page: a page named so would take their place, and the
# toolkit would then call the file foreign. (report.html itself is fine: its numbers are this file.)
REPORT_NUMBERS = ("report.json",)


def _inside_run_dir(path: str) -> str:
    parts = PurePath(path).parts
    if not path or PurePath(path).is_absolute() or ".." in parts or path.startswith("~"):
        raise ValueError("must be a relative path inside the run directory")
    numbers = PurePath(path).with_suffix(".json").name if path.endswith(".html") else PurePath(path).name + ".json"
    taken = parts[0] if parts[0] in PIPELINE_FILES else numbers if len(parts) == 1 and numbers in PIPELINE_FILES \
        else path if path in REPORT_NUMBERS else None
    if taken is not None:
        raise ValueError(f"must not name a file the pipeline writes ({taken}): choose e.g. report.html")
    if not path.endswith(".html"):  # the page is HTML, as `toolkit report --out` requires
        raise ValueError("must name an HTML page ending in .html, e.g. report.html")
    return path


@dataclass
class ReportOptions:
    """Where the pipeline writes its report: `out`, relative to the run directory."""

    __pydantic_config__ = FORBID_EXTRA

    out: Annotated[str, Strict(), AfterValidator(_inside_run_dir)] = "report.html"


@dataclass
class PipelineConfig:
    """Everything `run_pipeline` takes besides the data and the model family.

    Attributes:
        target: label column of a table (default: the last column).
        keep, drop: columns to keep although ID-like or constant, columns to drop; sep: the CSV separator.
        image_size: the side in pixels to resize a folder's images to (default: they share one size).
    """

    __pydantic_config__ = FORBID_EXTRA

    target: Str | None = None
    keep: list[Str] = field(default_factory=list)
    drop: list[Str] = field(default_factory=list)
    sep: Str | None = None
    image_size: Annotated[int, Strict(), Field(ge=IMAGE_SIZE_RANGE[0], le=IMAGE_SIZE_RANGE[1])] | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    compress: CompressOptions = field(default_factory=CompressOptions)
    explain: ExplainOptions = field(default_factory=ExplainOptions)
    report: ReportOptions = field(default_factory=ReportOptions)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)

    def to_dict(self) -> dict:
        """Plain data, with the names a config file uses (`train.arch`): loadable again by `resolve_config`."""
        return TypeAdapter(PipelineConfig).dump_python(self, mode="json", by_alias=True)


def read_config_file(path: str | Path) -> dict:
    """A TOML (.toml), YAML (.yaml, .yml) or JSON (.json) file as a dict of sections; ToolkitError when unreadable."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ToolkitError(f"config file must be .toml, .yaml, .yml or .json, got {path.name}")
    check_regular_file(path, "config file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ToolkitError(f"config file {path} has {path.stat().st_size:,} bytes, more than the "
                           f"{MAX_CONFIG_BYTES:,} a configuration may have")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows Notepad saves one) is dropped, as for a CSV
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"cannot read config file {path}: {exc}") from None
    try:
        obj = _parse_text(text, suffix)
    except Exception as exc:  # TOMLDecodeError, YAMLError, JSONDecodeError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ToolkitError(f"cannot parse config file {path}: {first}") from None
    obj = {} if obj is None else obj
    if not isinstance(obj, dict):
        raise ToolkitError(f"config file {path} must hold a table of sections ([train], [compress], ...)")
    if obj.get("stage") == "pipeline":  # a run's saved config.json
        obj = {key: value for key, value in obj.items() if key not in RUN_KEYS}
    return obj


def _parse_text(text: str, suffix: str):
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:
            import tomli as tomllib
        return tomllib.loads(text)
    if suffix == ".json":
        return json.loads(text, object_pairs_hook=_unique_keys)
    from trainers import yamlsafe

    return yamlsafe.load(text)


def _unique_keys(pairs: list) -> dict:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"duplicate key {duplicates[0]!r}")
    return dict(pairs)


def resolve_config(config: PipelineConfig | str | Path | dict | None = None,
                   overrides: dict | None = None) -> PipelineConfig:
    """The defaults, then `config` (a file, a dict of sections or a PipelineConfig), then `overrides`.

    `overrides` maps dotted keys to values, e.g. {"train.epochs": 3, "compress.methods": ["int8-dynamic"]}.
    Every value is checked; the first bad one is a ToolkitError naming its `section.key`.
    """
    if isinstance(config, PipelineConfig):
        values = config.to_dict()
    elif isinstance(config, (str, Path)):
        values = read_config_file(config)
    elif config is None or isinstance(config, dict):
        values = copy.deepcopy(config or {})
    else:
        raise ToolkitError(f"config must be a file, a dict of sections or a PipelineConfig, got {type(config).__name__}")
    for dotted, value in (overrides or {}).items():
        *sections, key = dotted.split(".")
        table = values
        for name in sections:
            table = table.setdefault(name, {})
            if not isinstance(table, dict):
                break  # parse() names the section that is not a table
        else:
            table[key] = value
    return parse(PipelineConfig, values, "config")


def save_config(run_dir: Path, cfg: PipelineConfig, **run) -> None:
    """`config.json` (the run's description `run` and the resolved sections) and `config.yaml` (the sections).

    Both load again with `--config`.
    """
    import yaml

    sections = cfg.to_dict()
    atomic_write_json(run_dir / "config.json", {"stage": "pipeline", **run, **sections})
    header = "# Resolved configuration of this pipeline run; pass it again with --config to reproduce it.\n"
    atomic_write_text(run_dir / "config.yaml", header + yaml.safe_dump(sections, sort_keys=False))
