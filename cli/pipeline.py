"""`toolkit pipeline`: train, compress (auto), explain (original and chosen variant) and report, in one run directory.

Python users call `run_pipeline(...)`; the command only parses options. The run
directory holds `train/`, `compress/`, `explain/`, the resolved `config.json`
(and `config.yaml`, loadable again with `--config`), `pipeline.json` (stage
statuses, times and errors) and `report.html`.
"""

from __future__ import annotations

import importlib
import json
import shlex
import os
import shutil
import sys
import time
from copy import deepcopy
from pathlib import Path, PurePath
from typing import List, Optional

import typer

from trainers.errors import ToolkitError

from .common import FAMILIES, emit_json, handle_errors, info

_INT, _FLOAT, _STR, _LIST, _DICT = "integer", "number", "string", "list of strings", "table"

# Every key a config file may hold: section -> key -> (type, default). Defaults follow each stage's own.
SCHEMA: dict[str, dict[str, tuple[str, object]]] = {
    "train": {"epochs": (_INT, 100), "batch_size": (_INT, 64), "lr": (_FLOAT, 3e-3), "weight_decay": (_FLOAT, 1e-4),
              "patience": (_INT, 15), "lr_patience": (_INT, 5), "device": (_STR, "auto"), "seed": (_INT, 0),
              "target": (_STR, None), "arch": (_DICT, {})},
    "compress": {"methods": (_LIST, ["auto"]), "max_drop": (_FLOAT, 0.5), "options": (_DICT, {})},
    "explain": {"methods": (_LIST, None), "samples": (_INT, 64), "seed": (_INT, 0)},
    "report": {"out": (_STR, "report.html")},
}
# Flat keyword names accepted by run_pipeline (and set by the command's options).
FLAT = {"epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
        "seed": ("train", "seed"), "device": ("train", "device"), "target": ("train", "target"),
        "arch": ("train", "arch"), "max_drop": ("compress", "max_drop"), "compress_methods": ("compress", "methods"),
        "explain_methods": ("explain", "methods"), "samples": ("explain", "samples"),
        "explain_seed": ("explain", "seed"), "report_out": ("report", "out")}
STAGES = ("train", "compress", "explain", "report")


class StageFailed(Exception):
    """A stage failed after the pipeline started; the report of what finished was still written.

    Attributes: stage, code (2 bad input, 1 unexpected), report (path or None), run_dir; `__cause__` is the error.
    """

    def __init__(self, stage: str, message: str, code: int, report: Path | None, run_dir: Path):
        super().__init__(f"{stage} stage failed: {message}")
        self.stage, self.code, self.report, self.run_dir = stage, code, report, run_dir


# ---------------------------------------------------------------- configuration


def defaults() -> dict:
    return {section: {k: deepcopy(d) for k, (_, d) in keys.items()} for section, keys in SCHEMA.items()}


def _check(section: str, key: str, value):
    """Validate one value against the schema; return it normalised, or raise naming `section.key`."""
    if section not in SCHEMA:
        raise ToolkitError(f"unknown config section '{section}'; expected one of {', '.join(SCHEMA)}")
    if key not in SCHEMA[section]:
        raise ToolkitError(f"unknown config key '{section}.{key}'; {section} accepts {', '.join(SCHEMA[section])}")
    kind, default = SCHEMA[section][key]
    if value is None and default is None:
        return None
    ok = {
        _INT: isinstance(value, int) and not isinstance(value, bool),
        _FLOAT: isinstance(value, (int, float)) and not isinstance(value, bool),
        _STR: isinstance(value, str),
        _LIST: isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
        _DICT: isinstance(value, dict),
    }[kind]
    if not ok:
        raise ToolkitError(f"config key '{section}.{key}' must be a {kind}, got {type(value).__name__} {value!r}")
    if kind == _FLOAT:
        value = float(value)
    if kind == _LIST and isinstance(value, str):
        value = [value]
    if section == "report" and key == "out":
        _inside_run_dir(value, f"{section}.{key}")
    return value


def _inside_run_dir(path: str, key: str) -> None:
    p = PurePath(path)
    if not path or p.is_absolute() or ".." in p.parts or path.startswith("~"):
        raise ToolkitError(f"config key '{key}' must be a relative path inside the run directory, got {path!r}")


def read_config_file(path: str | Path) -> dict:
    """A TOML (.toml) or YAML (.yaml/.yml, or .json) file as a dict of sections; ToolkitError when unreadable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ToolkitError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"cannot read config file {path}: {exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            obj = tomllib.loads(text)
        elif suffix in (".yaml", ".yml", ".json"):
            import yaml

            obj = yaml.safe_load(text) if text.strip() else {}
        else:
            raise ToolkitError(f"config file must be .toml, .yaml or .yml, got {path.name}")
    except ToolkitError:
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolkitError(f"cannot parse config file {path}: {first}") from None
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise ToolkitError(f"config file {path} must hold a table of sections ([train], [compress], ...)")
    return obj


def resolve_config(config: str | Path | dict | None = None, **overrides) -> dict:
    """Defaults, then the config file (or dict), then `overrides`; every key checked and named when wrong.

    `overrides` take flat names (`epochs=3`, `max_drop=1.0`, `compress_methods=["prune"]`, see FLAT) or whole
    sections (`train={"epochs": 3}`); None values are ignored, so unset command-line options do not override.
    """
    resolved = defaults()
    layers = []
    if config is not None:
        layers.append(read_config_file(config) if isinstance(config, (str, Path)) else config)
    section_overrides: dict[str, dict] = {}
    for name, value in overrides.items():
        if value is None:
            continue
        if name in SCHEMA:
            if not isinstance(value, dict):
                raise ToolkitError(f"override '{name}' must be a dict of {name} options")
            section_overrides.setdefault(name, {}).update(value)
        elif name in FLAT:
            section, key = FLAT[name]
            section_overrides.setdefault(section, {})[key] = value
        else:
            raise ToolkitError(f"unknown pipeline option '{name}'; use {', '.join([*FLAT, *SCHEMA])}")
    layers.append(section_overrides)
    for layer in layers:
        for section, values in layer.items():
            if section not in SCHEMA:
                raise ToolkitError(f"unknown config section '{section}'; expected one of {', '.join(SCHEMA)}")
            if not isinstance(values, dict):
                raise ToolkitError(f"config section '{section}' must be a table of options, got {values!r}")
            for key, value in values.items():
                resolved[section][key] = _check(section, key, value)
    return resolved


# ---------------------------------------------------------------- running


def _stage_function(module: str, name: str):
    """The stage's public function, or None while that stage is not built yet."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def _command(data: str, family: str, run_dir: Path) -> str:
    return shlex.join(["toolkit", "pipeline", str(data), "--model", family, "--config", str(run_dir / "config.yaml")])


def _prepare(out: Path, overwrite: bool) -> Path | None:
    """Make `out` empty; with overwrite, move the old run aside (removed once the new report is written)."""
    if out.exists() and not out.is_dir():
        raise ToolkitError(f"output path exists and is not a directory: {out}")
    aside = None
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ToolkitError(f"output directory {out} already exists; pass --overwrite to replace it")
        aside = out.with_name(f".{out.name}.old-{os.getpid()}")
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(out, aside)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"cannot create run directory {out}: {exc.strerror}") from None
    return aside


def _write_json(path: Path, obj) -> None:
    from trainers.fileio import atomic_write_json

    atomic_write_json(path, obj)


def run_pipeline(data: str | Path, family: str, *, config: str | Path | dict | None = None,
                 out: str | Path | None = None, overwrite: bool = False, progress=None, **overrides) -> Path:
    """Train, compress (auto), explain (original and chosen variant, with drift) and report in one run directory.

    Args:
        data: a built-in data set name or a .npz/.csv path.
        family: model family (mlp, cnn, lstm).
        config: a TOML/YAML file or a dict of sections (train, compress, explain, report).
        out: the run directory (default runs/<time>-pipeline-<family>).
        overwrite: replace an existing run directory.
        progress: callable taking one line of progress (default: print on stderr).
        overrides: flat options (epochs=3, max_drop=1.0, ...) or sections (train={...}); they win over `config`.

    Returns:
        The path of report.html.

    Raises:
        ToolkitError: bad input found before anything ran (nothing is written).
        StageFailed: a stage failed; the report of what finished is written and named in the exception.
    """
    from trainers import default_run_dir, load_data
    from trainers.errors import ToolkitError as _ToolkitError

    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    if family not in FAMILIES:
        raise ToolkitError(f"unknown --model '{family}'; choose from {', '.join(FAMILIES)}")
    cfg = resolve_config(config, **overrides)
    train_cfg = _train_config(cfg["train"])
    train_cfg.validate()
    _preflight(cfg, family)
    bundle = load_data(data, target=cfg["train"]["target"], seed=cfg["train"]["seed"])  # bad data: exit 2, no dir
    out = Path(out) if out is not None else default_run_dir("pipeline", family)
    aside = _prepare(out, overwrite)
    started = time.perf_counter()
    command = _command(str(data), family, out)
    _write_json(out / "config.json", {"stage": "pipeline", "data": str(data), "family": family, **cfg,
                                      "command": command})
    _write_yaml(out / "config.yaml", cfg)
    status = {"stage": "pipeline", "data": str(data), "family": family, "stages": [], "errors": [], "seconds": None,
              "report": cfg["report"]["out"]}
    steps = [("train", lambda: _train(bundle, family, train_cfg, out)),
             ("compress", lambda: _compress(bundle, out, cfg["compress"], say)),
             ("explain", lambda: _explain(bundle, out, cfg["explain"], say))]
    failure = None
    for index, (name, step) in enumerate(steps, 1):
        if failure is not None:
            status["stages"].append({"name": name, "status": "not run", "reason": f"{failure[0]} failed"})
            continue
        say(f"[{index}/4] {name} ...")
        tick = time.perf_counter()
        try:
            outcome = step()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded, reported, then raised as StageFailed
            code = 2 if isinstance(exc, _ToolkitError) else 1
            message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if code == 1:
                message = f"{type(exc).__name__}: {message}"
            failure = (name, message, code, exc)
            status["stages"].append({"name": name, "status": "failed", "seconds": round(time.perf_counter() - tick, 3),
                                     "reason": message})
            status["errors"].append({"stage": name, "message": message, "code": code})
            say(f"[{index}/4] {name} failed: {message}")
        else:
            seconds = round(time.perf_counter() - tick, 3)
            status["stages"].append({"name": name, "seconds": seconds, **outcome})
            say(f"[{index}/4] {name} {outcome['status']} in {seconds:.1f}s" +
                (f": {outcome['reason']}" if outcome.get("reason") else ""))
        _write_json(out / "pipeline.json", status)
    say("[4/4] report ...")
    status["seconds"] = round(time.perf_counter() - started, 3)
    status["stages"].append({"name": "report", "status": "done"})
    _write_json(out / "pipeline.json", status)
    report = _report(out, cfg["report"]["out"])
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    say(f"pipeline finished in {time.perf_counter() - started:.1f}s" + (" with a failed stage" if failure else ""))
    if failure is not None:
        name, message, code, exc = failure
        raise StageFailed(name, message, code, report, out) from exc
    return report


def _preflight(cfg: dict, family: str) -> None:
    """Check the compress and explain options before anything runs: a typo must not cost a training run."""
    from compress import check_request
    from explain import check_family, check_samples

    check_request(cfg["compress"]["methods"] or ["auto"], family, cfg["compress"]["max_drop"],
                  cfg["compress"]["options"])
    check_samples(cfg["explain"]["samples"])
    for method in cfg["explain"]["methods"] or ():
        check_family(method, family)


def _train_config(section: dict):
    from trainers import TrainConfig

    return TrainConfig(epochs=section["epochs"], batch_size=section["batch_size"], lr=section["lr"],
                       weight_decay=section["weight_decay"], patience=section["patience"],
                       lr_patience=section["lr_patience"], device=section["device"], seed=section["seed"],
                       model=dict(section["arch"]))


def _train(bundle, family, train_cfg, out: Path) -> dict:
    from trainers import train

    result = train(bundle, family, train_cfg, out=out / "train")
    m = result.metrics
    return {"status": "done", "reason": f"test accuracy {m['test_accuracy']:.4f} after {result.epochs_run} epochs"}


def _with_progress(func, kwargs: dict, say) -> dict:
    """Pass the pipeline's progress printer to a stage function that takes one."""
    import inspect

    try:
        accepts = "progress" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        accepts = False
    return {**kwargs, "progress": lambda message: say(f"      {message}")} if accepts else kwargs


def _compress(bundle, out: Path, section: dict, say=print) -> dict:
    compress_model = _stage_function("compress", "compress_model")
    if compress_model is None:
        return {"status": "skipped", "reason": "compress.compress_model is not available in this version"}
    kwargs = {"methods": tuple(section["methods"]), "max_drop": section["max_drop"], "out": out / "compress",
              "options": dict(section["options"]) or None}
    compress_model(str(out / "train"), bundle, **_with_progress(compress_model, kwargs, say))
    chosen = _chosen(out)
    return {"status": "done", "reason": f"chosen variant {chosen[0]}" if chosen else None}


def _chosen(out: Path) -> tuple[str, Path | None] | None:
    """The chosen variant's name and directory (None for the fp32 original), from compress/result.json."""
    path = out / "compress" / "result.json"
    if not path.is_file():
        return None
    chosen = json.loads(path.read_text(encoding="utf-8")).get("chosen") or {}
    name, rel = chosen.get("name"), chosen.get("path")
    if not name:
        return None
    if not rel or name == "fp32-torch":
        return name, None
    directory = (out / "compress" / rel) if not Path(rel).is_absolute() else Path(rel)
    return name, directory if (directory / "model.json").is_file() else None


def _explain(bundle, out: Path, section: dict, say=print) -> dict:
    explain_model = _stage_function("explain", "explain_model")
    if explain_model is None:
        return {"status": "skipped", "reason": "explain.explain_model is not available in this version"}
    chosen = _chosen(out)
    compare = (str(chosen[1]),) if chosen and chosen[1] is not None else ()
    kwargs = {"compare": compare, "samples": section["samples"], "out": out / "explain", "seed": section["seed"]}
    if section["methods"]:
        kwargs["methods"] = tuple(section["methods"])
    explain_model(str(out / "train"), bundle, **_with_progress(explain_model, kwargs, say))
    return {"status": "done", "reason": f"drift against {chosen[0]}" if compare else "no compressed variant to compare"}


def _report(out: Path, name: str) -> Path:
    from reports import render_report

    return render_report(out, out / name)


def _write_yaml(path: Path, cfg: dict) -> None:
    import yaml

    from trainers.fileio import atomic_write_text

    header = "# Resolved configuration of this pipeline run; pass it again with --config to reproduce it.\n"
    atomic_write_text(path, header + yaml.safe_dump(cfg, sort_keys=False))


# ---------------------------------------------------------------- command


@handle_errors
def pipeline_command(
    data: str = typer.Argument(..., help="Built-in data set (digits, iris, wine, breast_cancer) or a .npz/.csv file."),
    model: str = typer.Option(..., "--model", "-m", help=f"Model family: {', '.join(FAMILIES)}."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML or YAML file with sections train, compress, explain and report (keys as the options below)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<time>-pipeline-<model>)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    epochs: Optional[int] = typer.Option(None, help="train: maximum epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="train: samples per step."),
    lr: Optional[float] = typer.Option(None, help="train: AdamW learning rate."),
    seed: Optional[int] = typer.Option(None, help="train: seed of the split, initialisation and shuffling."),
    device: Optional[str] = typer.Option(None, help="train: auto, cpu or cuda."),
    target: Optional[str] = typer.Option(None, help="train: label column of a CSV file."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="compress: accuracy budget in percentage points."),
    method: Optional[List[str]] = typer.Option(None, "--method", help="compress: method(s) to try (default auto)."),
    explain_method: Optional[List[str]] = typer.Option(None, "--explain-method", help="explain: method(s)."),
    samples: Optional[int] = typer.Option(None, help="explain: test samples to explain."),
    as_json: bool = typer.Option(False, "--json", help="Print pipeline.json (stages, times, report path) on stdout."),
):
    """Train, compress, explain and report in one run directory; prints the report's path.

    Command-line options override the config file. Example:
    toolkit pipeline digits --model cnn --config pipeline.toml --out runs/digits-cnn
    """
    try:
        report = run_pipeline(data, model, config=config, out=out, overwrite=overwrite, epochs=epochs,
                              batch_size=batch_size, lr=lr, seed=seed, device=device, target=target,
                              max_drop=max_drop, compress_methods=method or None,
                              explain_methods=explain_method or None, samples=samples)
    except StageFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        if exc.report is not None:
            info(f"report of what finished: {exc.report}")
            _print_result(exc.report, as_json)
        raise typer.Exit(exc.code)
    _print_result(report, as_json)


def _print_result(report: Path, as_json: bool) -> None:
    if as_json:
        run_dir = next(p for p in report.parents if (p / "pipeline.json").is_file())
        status = json.loads((run_dir / "pipeline.json").read_text(encoding="utf-8"))
        emit_json({**status, "run_dir": str(run_dir), "report": str(report)})
    else:
        info(f"report: {report} ({report.stat().st_size / 1024:.0f} KiB)")
        typer.echo(str(report))


def register(app: typer.Typer) -> None:
    app.command("pipeline")(pipeline_command)
