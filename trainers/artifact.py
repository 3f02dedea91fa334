"""The model artifact: a directory with `model.json`, `model.safetensors` and `metrics.json`.

Nothing here unpickles: metadata is JSON, weights are safetensors, and every
file is checked (presence, checksum, names and shapes) before a model is handed
back. Writes are atomic (see `fileio`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import numbers
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np

from . import inputrange
from .data import MAX_CLASSES
from .errors import ArtifactError, ToolkitError
from .fileio import atomic_write_bytes, atomic_write_json, commit_directory, read_json
from .options import DEVICE_PATTERN
from .ortsession import first_output, inference_session
from .streaming import PREDICT_BATCH

if TYPE_CHECKING:
    from torch import nn

# PyTorch is imported where a module is built or run, not with this module: `toolkit predict` on an ONNX graph
# loads no PyTorch (its import was 1.0-1.3 s of a 2.4 s call on 10,000 rows, where a 20-line ONNX Runtime script
# took 0.56 s).

FORMAT_VERSION = 1
# Version 2: a table step reads numbers written as text ("format") or centres a column in float64 ("offset").
# A reader of version 1 would skip both and feed the model other inputs, so such a model.json says 2, which it
# refuses; every other model.json stays 1, readable by earlier versions of the toolkit.
FORMAT_VERSIONS = (1, 2)
CUSTOM_FAMILY, ONNX_FAMILY = "custom", "onnx"  # a user's own torch.nn.Module; a user's own ONNX graph
MODEL_JSON, WEIGHTS, METRICS = "model.json", "model.safetensors", "metrics.json"
RAW_ONNX = "model.raw.onnx"  # an ONNX variant that takes raw table rows (numeric preprocessing inside)
SMALL_BATCH_DIR = "small-batch"  # the member artifact that serves small batches (`ModelSpec.serve`)
DTYPES = ("float32", "float16", "bfloat16")  # the dtypes a module's weights may have (`torch.<name>`)


@dataclass
class ModelSpec:
    """Everything in `model.json`: enough to rebuild the module and to trust it."""

    family: str
    config: dict
    input_shape: list[int]
    layout: str
    class_names: list[str]
    feature_names: list[str] | None = None
    preprocessing: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=lambda: {"parent": None, "recipe": None})
    runtime: str = "torch"
    dtype: str = "float32"
    weights: dict = field(default_factory=lambda: {"file": WEIGHTS, "codec": "dense"})
    onnx: dict | None = None
    extra: dict = field(default_factory=dict)
    serve: dict | None = None
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        table = (self.preprocessing or {}).get("table") or {}
        newer = any("format" in step or "offset" in step for step in table.get("steps", ()))
        return {**asdict(self), "format_version": 2 if newer else FORMAT_VERSION}

    @classmethod
    def from_dict(cls, raw: dict, where: str = "model.json") -> "ModelSpec":
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("family", "config", "input_shape", "layout", "class_names") if k not in raw]
        if missing:
            raise ArtifactError(f"{where}: missing field(s) {', '.join(missing)}")
        if raw.get("format_version") not in FORMAT_VERSIONS:
            raise ArtifactError(f"{where}: unsupported format_version {raw.get('format_version')!r} (this toolkit "
                                f"reads {' and '.join(map(str, FORMAT_VERSIONS))})")
        try:
            spec = cls(**{k: v for k, v in raw.items() if k in known})
            spec.input_shape = [int(d) for d in spec.input_shape]
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: malformed field: {exc}") from None
        for name in ("family", "layout", "runtime", "dtype"):
            if not isinstance(getattr(spec, name), str):
                raise ArtifactError(f"{where}: '{name}' must be a string, got {type(getattr(spec, name)).__name__}")
        for name in ("training", "data", "versions", "lineage", "extra", "onnx"):
            value = getattr(spec, name)
            if value is None and name != "onnx":
                setattr(spec, name, cls.__dataclass_fields__[name].default_factory())
            elif value is not None and not isinstance(value, dict):
                raise ArtifactError(f"{where}: '{name}' must be an object, got {type(value).__name__}")
        if spec.dtype not in DTYPES:
            raise ArtifactError(f"{where}: unknown dtype {spec.dtype!r}")
        if not isinstance(spec.config, dict) or not isinstance(spec.class_names, list) or not spec.class_names:
            raise ArtifactError(f"{where}: 'config' must be an object and 'class_names' a non-empty list")
        if len(spec.class_names) > MAX_CLASSES:
            raise ArtifactError(f"{where}: {len(spec.class_names):,} classes, more than the limit of {MAX_CLASSES:,}")
        features = [] if spec.feature_names is None else spec.feature_names
        if not isinstance(features, list) or not all(isinstance(n, str) for n in [*spec.class_names, *features]):
            raise ArtifactError(f"{where}: 'class_names' and 'feature_names' must be lists of strings")
        if len(set(spec.class_names)) != len(spec.class_names):
            raise ArtifactError(f"{where}: 'class_names' names a class twice; each output needs its own name")
        if not isinstance(spec.weights, dict) or not isinstance(spec.preprocessing, dict):
            raise ArtifactError(f"{where}: 'weights' and 'preprocessing' must be objects")
        _check_statistics(spec.preprocessing, where)
        if spec.serve is not None:
            _check_serve(spec.serve, where)
        return spec

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _check_serve(serve, where: str) -> None:
    """`serve`: {"below_batch": n, "dir": name, "sha256": ...}: calls on fewer than n rows run the member artifact
    in the subdirectory `dir` (a model made for one row at a time), the rest run this one."""
    if not isinstance(serve, dict) or set(serve) != {"below_batch", "dir", "sha256"}:
        raise ArtifactError(f"{where}: 'serve' must be an object with below_batch, dir and sha256")
    below = serve["below_batch"]
    if not isinstance(below, int) or isinstance(below, bool) or not 2 <= below <= 1 << 20:
        raise ArtifactError(f"{where}: serve.below_batch must be a whole number from 2 to {1 << 20}, got {below!r}")
    if not isinstance(serve["sha256"], str):
        raise ArtifactError(f"{where}: serve.sha256 must be a string")


# The smallest standardisation std an artifact may hold: training stores 1 for a std under 1e-6
# (`data._normalisation`), and a zero or denormal std (1e-45) made every prediction NaN with exit 0.
STD_FLOOR = 1e-7


def _check_statistics(pre: dict, where: str) -> None:
    """Standardisation statistics must be finite, with every std at least STD_FLOOR: else every prediction is NaN."""
    for key in ("mean", "std"):
        if pre.get(key) is None:
            continue
        try:
            values = np.asarray(pre[key], dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise ArtifactError(f"{where}: preprocessing.{key} must be an array of numbers") from None
        if values.dtype.kind != "f" or not np.isfinite(values).all() or (key == "std" and (values < STD_FLOOR).any()):
            rule = f"finite and at least {STD_FLOOR}" if key == "std" else "finite"
            raise ArtifactError(f"{where}: preprocessing.{key} must be {rule}")


@dataclass
class LoadedModel:
    """A model ready for inference: the PyTorch module, its spec, where it came from.

    For `runtime == "onnxruntime"` artifacts, `predict` runs the ONNX file and
    `module` is the PyTorch twin (if the artifact has one) for gradient methods.

    A user's own model (`trainers.as_model`) is one too: `origin` says what it was made from (an ONNX file,
    a `torch.nn.Module`), `onnx_bytes` holds an ONNX graph kept in memory, and `notes` says what the toolkit
    could not do with it (e.g. rebuild its PyTorch class).

    `small`: where `spec.serve` is set, the model that answers calls on fewer than `spec.serve["below_batch"]`
    rows (`predict` routes each call by its size); everything else (explanations, the model card) reads this
    one, the model that serves the large batches.
    """

    module: Any  # a torch.nn.Module, or None (typed Any: PyTorch is imported only where a module is built or run)
    spec: ModelSpec
    path: Path | None = None
    metrics: dict = field(default_factory=dict)
    _session: Any = field(default=None, repr=False)
    origin: str | None = None
    onnx_bytes: bytes | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)
    small: "LoadedModel | None" = field(default=None, repr=False)
    device: str = "cpu"  # where its ONNX Runtime sessions serve (`trainers.ortsession.providers_for`)

    def onnx_model_bytes(self) -> bytes | None:
        """The ONNX graph this model runs (in memory, or the artifact's file), or None when it has none."""
        if self.onnx_bytes is not None:
            return self.onnx_bytes
        if self.path is not None and self.spec.onnx and self.spec.onnx.get("file"):
            return _member(self.path, self.spec.onnx["file"]).read_bytes()
        return None
    _raw_session: Any = field(default=None, repr=False)

    @property
    def runtime(self) -> str:
        return self.spec.runtime

    @property
    def source(self) -> str:
        """Where the model came from, as lineage and results record it: its directory, the user's file, or
        `<in-memory FAMILY>`. A path is absolute, so a record read from another directory still finds it."""
        if self.path is not None:
            return os.path.abspath(self.path)
        return self.origin or f"<in-memory {self.spec.family}>"

    def onnx_session(self, threads: int | None = None):
        """An ONNX Runtime session on the artifact's ONNX file (created once)."""
        if self._session is None or threads is not None:
            import onnxruntime as ort

            onnx_bytes = self.onnx_model_bytes()
            if onnx_bytes is None:
                raise ArtifactError("this model has no ONNX file")
            options = ort.SessionOptions()
            options.log_severity_level = 4  # errors reach the caller as exceptions: no ORT log lines on stderr
            if threads:
                options.intra_op_num_threads = threads
            try:
                session = inference_session(onnx_bytes, options, self.device)
            except Exception as exc:  # ORT raises its own exception types for bad files
                raise ArtifactError(f"cannot load ONNX model {self.source}: {str(exc).splitlines()[0]}") from None
            if threads is not None:
                return session
            self._session = session
        return self._session

    def raw_onnx_session(self):
        """An ONNX Runtime session on the artifact's raw-row ONNX file (the table's numeric preprocessing inside)."""
        if self._raw_session is None:
            raw_path = self.path / self.spec.onnx["raw_file"]
            try:
                self._raw_session = inference_session(str(raw_path), device=self.device)
            except Exception as exc:  # ORT raises its own exception types for bad files
                raise ArtifactError(f"cannot load ONNX model {raw_path}: {exc}") from None
        return self._raw_session

    def predict(self, x, batch_size: int = PREDICT_BATCH) -> np.ndarray:
        return predict(self, x, batch_size=batch_size)


def weight_file_bytes(module: nn.Module, codec: str = "dense") -> bytes:
    """The safetensors file of `module`'s state dict, encoded by `codec`.

    safetensors refuses tensors that share memory (a module's tied weights: `b.weight = a.weight`), to keep a
    file from aliasing; each later name of a shared tensor is stored as its own copy here, so the file holds
    every name `load_state_dict` expects (loading writes the same values into the one tied parameter twice).
    """
    from safetensors.torch import save as safetensors_save

    from .codecs import CODECS

    seen, tensors = set(), {}
    for name, value in module.state_dict().items():
        value = value.detach().cpu()
        key = value.untyped_storage().data_ptr() if value.numel() else None
        tensors[name] = value.clone() if key in seen else value.contiguous()
        seen.add(key)
    return safetensors_save(CODECS[codec].encode(tensors), metadata={"format": "pt"})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parent_checksum(weights: dict | None, onnx: dict | None) -> str | None:
    """The checksum a variant's lineage records of its parent (`parent_sha256`): of the parent's weights file,
    else of its ONNX graph; from a model.json's `weights` and `onnx` entries. Compress writes it; explain's
    comparison and the report read it against the model at the parent's path now."""
    return (weights or {}).get("sha256") or (onnx or {}).get("sha256")


def write_artifact(directory: str | Path, module: nn.Module | None, spec: ModelSpec, metrics: dict | None = None,
                   *, onnx_bytes: bytes | None = None, raw_onnx_bytes: bytes | None = None) -> ModelSpec:
    """Write the artifact files into an existing directory, each atomically, `model.json` last.

    `raw_onnx_bytes`, the ONNX graph that takes raw table rows (`compress.export.raw_rows_onnx`), is written
    as `model.raw.onnx` beside `model.onnx`.

    Returns the spec as written (with checksums and sizes filled in).
    """
    directory = Path(directory)
    spec = ModelSpec.from_dict(spec.to_dict())  # a copy we may fill in
    if module is not None:
        atomic_write_bytes(directory / WEIGHTS, weight_file_bytes(module, spec.weights.get("codec", "dense")))
        spec.weights = {**spec.weights, "file": WEIGHTS, "sha256": sha256_file(directory / WEIGHTS)}
    else:
        spec.weights = {}
    if onnx_bytes is not None:
        atomic_write_bytes(directory / "model.onnx", onnx_bytes)
        spec.onnx = {**(spec.onnx or {}), "file": "model.onnx", "sha256": sha256_file(directory / "model.onnx")}
    if raw_onnx_bytes is not None:
        atomic_write_bytes(directory / RAW_ONNX, raw_onnx_bytes)
        spec.onnx = {**(spec.onnx or {}), "raw_file": RAW_ONNX, "raw_sha256": sha256_file(directory / RAW_ONNX)}
    metrics = dict(metrics or {})
    metrics["size_bytes"] = artifact_size(directory, spec)
    if module is not None:
        from .models import count_parameters

        metrics["parameters"] = count_parameters(module)
    atomic_write_json(directory / METRICS, metrics)
    atomic_write_json(directory / MODEL_JSON, spec.to_dict())
    return spec


def artifact_size(directory: Path, spec: ModelSpec) -> int:
    """Bytes on disk of what inference needs: the runtime's model file (and its small-batch member's)."""
    directory = Path(directory)
    member = 0
    if spec.serve:
        member_dir = directory / spec.serve["dir"]
        member = artifact_size(member_dir, ModelSpec.from_dict(read_json(member_dir / MODEL_JSON, "model.json")))
    if spec.runtime == "onnxruntime" and spec.onnx:
        return (directory / spec.onnx["file"]).stat().st_size + member
    return (directory / WEIGHTS).stat().st_size + member


def write_member(directory: str | Path, small: "LoadedModel", below_batch: int, *, onnx_bytes: bytes | None = None,
                 raw_onnx_bytes: bytes | None = None, metrics: dict | None = None) -> tuple[dict, ModelSpec]:
    """Write `small`, the model that serves calls on fewer than `below_batch` rows, as the member artifact of the
    artifact being written in `directory` (before its `model.json`); returns the `serve` entry for that spec and
    the member's spec as written."""
    if small.spec.serve or small.small is not None:
        raise ToolkitError("a small-batch member cannot route calls itself")
    member = Path(directory) / SMALL_BATCH_DIR
    member.mkdir(exist_ok=True)
    written = write_artifact(member, small.module, small.spec, metrics, onnx_bytes=onnx_bytes,
                             raw_onnx_bytes=raw_onnx_bytes)
    serve = {"below_batch": int(below_batch), "dir": SMALL_BATCH_DIR, "sha256": sha256_file(member / MODEL_JSON)}
    return serve, written


def save_model(model: LoadedModel, out: str | Path, *, metrics: dict | None = None,
               overwrite: bool = False, onnx_bytes: bytes | None = None) -> Path:
    """Save a model as a new artifact directory, atomically (`onnx_bytes`: the graph to write; by default an ONNX
    variant's own)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ToolkitError(f"output directory {out} already exists; pass overwrite=True to replace it")
    if onnx_bytes is None and model.spec.runtime == "onnxruntime":  # an ONNX variant saves the graph it runs
        onnx_bytes = model.onnx_model_bytes()
    staging = out.with_name(out.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        spec, raw = _raw_graph(model)
        if model.small is not None:
            small_spec, small_raw = _raw_graph(model.small)
            small_bytes = model.small.onnx_model_bytes() if small_spec.runtime == "onnxruntime" else None
            serve, _ = write_member(staging, dataclasses.replace(model.small, spec=small_spec), spec.serve["below_batch"],
                                    onnx_bytes=small_bytes, raw_onnx_bytes=small_raw)
            spec = ModelSpec.from_dict({**spec.to_dict(), "serve": serve})
        write_artifact(staging, model.module, spec, metrics, onnx_bytes=onnx_bytes, raw_onnx_bytes=raw)
        commit_directory(staging, out, last=MODEL_JSON)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _raw_graph(model: LoadedModel) -> tuple[ModelSpec, bytes | None]:
    """The spec to save `model` with and its raw-row ONNX graph: read from its artifact, or, where it has none to
    read (a model in memory), the spec without the `raw_file` entry that would name a file not written."""
    onnx = model.spec.onnx or {}
    if not onnx.get("raw_file"):
        return model.spec, None
    if model.path is not None:
        return model.spec, _member(model.path, onnx["raw_file"]).read_bytes()
    kept = {k: v for k, v in onnx.items() if k not in ("raw_file", "raw_sha256")}
    return dataclasses.replace(model.spec, onnx=kept), None


def artifact_of_onnx(path: str | Path) -> Path | None:
    """The artifact directory whose own ONNX file `path` is (`variants/NAME/model.onnx` or its `model.raw.onnx`),
    or None for any other file: served as its directory, a variant keeps its preprocessing, lineage and classes
    (read alone, a variant's model.onnx wanted encoded rows, and model.raw.onnx was a stranger's graph)."""
    path = Path(path)
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return None
    try:
        onnx = read_json(path.parent / MODEL_JSON, "model.json").get("onnx")
    except Exception:  # no model.json, or not one of the toolkit's: the file is a user's ONNX graph
        return None
    return path.parent if isinstance(onnx, dict) and path.name in (onnx.get("file"), onnx.get("raw_file")) else None


def check_device(device) -> str:
    """`device` where a model can serve on this machine: "cpu", or "cuda" / "cuda:N" with that GPU present;
    else one clear ToolkitError."""
    if not isinstance(device, str) or not re.fullmatch(DEVICE_PATTERN, device):
        raise ToolkitError(f"--device must be cpu, cuda or cuda:N (a GPU's index), got {device!r}")
    if device == "cpu":
        return device
    import torch

    if not torch.cuda.is_available():
        raise ToolkitError(f"--device {device}: no CUDA GPU is available here (torch.cuda.is_available() is False)")
    if int(device.partition(":")[2] or 0) >= torch.cuda.device_count():
        raise ToolkitError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def load_model(path: str | Path, *, device: str = "cpu", module: nn.Module | None = None,
               twin: bool = True) -> LoadedModel:
    """Rebuild a model from an artifact directory, checking every file first.

    Args:
        path: the artifact directory.
        device: where the model serves (`check_device`): the PyTorch module goes there, and on a GPU an ONNX
            graph runs with ONNX Runtime's CUDA provider where the installed build has it (onnxruntime-gpu), else
            on the CPU.
        module: for an artifact of a user's own architecture (family "custom"), a fresh instance of its class
            (`load_model(dir, module=MyNet())`): the saved weights are loaded into it, names and shapes checked.
            Without it such an artifact loads as its ONNX graph, run by ONNX Runtime (no PyTorch module).
        twin: False skips the PyTorch twin of an artifact that ONNX Runtime runs (`module` is then None, and
            PyTorch is not imported): enough to predict (`toolkit predict`), not to explain or compress.

    Raises:
        ArtifactError: the directory is not an artifact, or a file is missing,
            truncated, modified or inconsistent with `model.json`.
    """
    path = Path(path)
    check_device(device)
    if not path.is_dir():
        raise ArtifactError(f"not a model directory: {path}" if path.exists() else f"model directory not found: {path}")
    if (path / "train" / MODEL_JSON).is_file() and not (path / MODEL_JSON).is_file():  # `predict` takes the run
        raise ArtifactError(f"{path} is a pipeline run, not a model artifact: its trained model is {path / 'train'}")
    if not (path / MODEL_JSON).is_file():
        raise ArtifactError(f"{path} is not a model artifact: no {MODEL_JSON}")
    try:
        raw = read_json(path / MODEL_JSON, "model.json")
        metrics = read_json(path / METRICS, "metrics.json") if (path / METRICS).is_file() else {}
    except ToolkitError as exc:
        raise ArtifactError(str(exc)) from None
    spec = ModelSpec.from_dict(raw, str(path / MODEL_JSON))
    if spec.onnx:
        _check_file(_member(path, spec.onnx.get("file")), spec.onnx.get("sha256"))
        if "raw_file" in spec.onnx:
            _check_file(_member(path, spec.onnx.get("raw_file")), spec.onnx.get("raw_sha256"))
    notes = []
    if spec.family == CUSTOM_FAMILY and module is None:
        if not spec.onnx:
            raise ArtifactError(f"{path}: the weights of a custom model need its class: "
                                "trainers.load_model(path, module=MyNet())")
        if spec.weights.get("file"):
            notes.append(f"{path / WEIGHTS} holds PyTorch weights of the user's own class ({spec.config.get('class')}); "
                         "trainers.load_model(path, module=MyNet()) loads them into a fresh instance")
        spec.runtime = "onnxruntime"  # what runs without the user's class: the ONNX graph
        return LoadedModel(module=None, spec=spec, path=path, metrics=metrics, notes=notes, origin=str(path),
                           device=device)
    if module is not None and spec.family != CUSTOM_FAMILY:
        raise ArtifactError(f"{path} is a {spec.family} model: the toolkit rebuilds it itself, pass no module")
    loaded = None
    if spec.weights.get("file") and (twin or spec.runtime != "onnxruntime"):
        loaded = _load_module(path, spec, device, module)
    elif spec.runtime != "onnxruntime":
        raise ArtifactError(f"{path / MODEL_JSON}: no weights file listed")
    small = _load_member(path, spec, device, twin) if spec.serve else None
    return LoadedModel(module=loaded, spec=spec, path=path, metrics=metrics, small=small, device=device)


def _load_member(path: Path, spec: ModelSpec, device: str, twin: bool = True) -> LoadedModel:
    """The small-batch member named by `spec.serve`, checked: its `model.json` as recorded, its files, and the same
    classes and input shape as the model it stands in for."""
    member = _member(path, spec.serve["dir"])
    if member.is_symlink() or not member.is_dir():
        raise ArtifactError(f"{path / MODEL_JSON}: serve.dir {spec.serve['dir']!r} is not a directory inside the model")
    _check_file(member / MODEL_JSON, spec.serve["sha256"])
    small = load_model(member, device=device, twin=twin)
    if small.spec.serve:
        raise ArtifactError(f"{member / MODEL_JSON}: a small-batch member cannot route calls itself")
    if small.spec.class_names != spec.class_names or small.spec.input_shape != spec.input_shape:
        raise ArtifactError(f"{member}: its classes or input shape differ from {path / MODEL_JSON}")
    return small


def _member(path: Path, name) -> Path:
    """A file named in model.json: a plain file name inside the artifact directory, never a path elsewhere."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ArtifactError(f"{path / MODEL_JSON}: file {name!r} must be a plain file name inside the model directory")
    return path / name


def _check_file(file: Path, expected_sha: str | None) -> None:
    if file.is_symlink():  # a link may point anywhere: the artifact holds its own files
        raise ArtifactError(f"{file} is a symbolic link; an artifact's files must be regular files inside it")
    if not file.is_file():
        raise ArtifactError(f"missing file: {file}")
    if expected_sha and sha256_file(file) != expected_sha:
        raise ArtifactError(f"{file} does not match model.json (checksum differs): it was modified, truncated or corrupted")


def _load_module(path: Path, spec: ModelSpec, device: str, given: nn.Module | None = None) -> nn.Module:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .codecs import CODECS
    from .models import build_model

    weights = _member(path, spec.weights["file"])
    _check_file(weights, spec.weights.get("sha256"))
    codec_name = spec.weights.get("codec", "dense")
    if codec_name not in CODECS:
        raise ArtifactError(f"{weights}: unknown weight codec {codec_name!r}")
    pre = spec.preprocessing
    try:  # built first (its size checked before allocating), so the weights are read against its shapes
        # on the CPU generator of its own: the layers' initial weights, drawn and then replaced by the stored ones,
        # would otherwise move a notebook's torch.manual_seed stream on every load (explain, predict, pipeline)
        with torch.random.fork_rng(devices=[]):
            module = given if given is not None else build_model(
                spec.family, spec.config, spec.input_shape, spec.num_classes, pre.get("mean"), pre.get("std"))
    except ToolkitError as exc:  # unknown family, architecture option or size: the artifact is at fault
        raise ArtifactError(f"{path / MODEL_JSON}: {exc}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ArtifactError(f"{path / MODEL_JSON}: cannot rebuild the {spec.family} model: {exc}") from None
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {weights} (truncated or not safetensors): {exc}") from None
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    try:
        state = CODECS[codec_name].decode(tensors, shapes)
    except (KeyError, RuntimeError, ValueError, TypeError, RecursionError) as exc:
        raise ArtifactError(f"{weights}: cannot decode {codec_name} weights: {exc}") from None
    _check_state(module, state, weights)
    _check_dtypes(state, spec, weights, module)
    module.load_state_dict(state, strict=True)
    return module.to(device=device, dtype=getattr(torch, spec.dtype)).eval()


def _check_state(module: nn.Module, state: dict, weights: Path) -> None:
    import torch

    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ArtifactError(f"{weights} does not match model.json: {detail}")
    for key, shape in expected.items():
        if found[key] != shape:
            raise ArtifactError(f"{weights} does not match model.json: {key} has shape {found[key]}, the architecture needs {shape}")
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ArtifactError(f"{weights}: tensor {key} contains NaN or infinite values")
        if key.endswith("standardize.std") and (tensor.float() < STD_FLOOR).any():  # model.json's copy is checked too
            raise ArtifactError(f"{weights}: tensor {key} holds a standardisation std under {STD_FLOOR} (zero or "
                                "denormal): every prediction would be NaN")


def _check_dtypes(state: dict, spec: ModelSpec, weights: Path, module: nn.Module) -> None:
    """Weights are stored in the dtype model.json names: an int8 or bool tensor is never cast silently.

    Integer buffers the architecture itself holds (BatchNorm's `num_batches_tracked`) stay integers."""
    integers = {k for k, v in module.state_dict().items() if not v.is_floating_point()}
    for key, tensor in state.items():
        if key in integers and not tensor.is_floating_point():
            continue
        stored = str(tensor.dtype).replace("torch.", "")
        if not tensor.is_floating_point() or (spec.runtime == "torch" and stored != spec.dtype):
            raise ArtifactError(f"{weights}: tensor {key} is stored as {stored}, model.json says {spec.dtype}")


def predict(model, x, batch_size: int = PREDICT_BATCH, device: str | None = None, *,
            call_rows: int | None = None) -> np.ndarray:
    """Logits for a batch of raw inputs, computed in batches without gradients.

    Args:
        model: a `LoadedModel` (PyTorch or ONNX Runtime), a plain `nn.Module`, an artifact directory, or an
            `.onnx` file or its bytes (`trainers.as_model`).
        x: array of shape (N, *input_shape); for a model trained on a table also raw rows (a DataFrame,
            a list of dicts, or an array in the table's column order; one row alone as a Series or a dict),
            preprocessed as at training.
        batch_size: rows per call (`PREDICT_BATCH`, as `toolkit predict`).
        call_rows: the call size that picks a routed model's member (below).

    A model with a small-batch member (`ModelSpec.serve`) picks one of its two models for the whole of `x`, by the
    size of the calls it makes, `call_rows` (default: `batch_size`, or len(x) when shorter): under `below_batch`
    rows the member. So `predict(model, one_row)` runs the member and `predict(model, rows, batch_size=256)` the
    model for every row, the last, shorter call too: a row's answer does not depend on where a call ends, and
    `toolkit predict` (which passes its --batch-size as `call_rows` for every chunk of a file) gives a file's
    rows the same answers whatever the file's length. The two members may disagree on a few rows
    (auto's note on the routed variant says how many of the test rows).
    """
    _check_rows(batch_size, "batch_size")
    if call_rows is not None:
        _check_rows(call_rows, "call_rows")
    if not isinstance(model, LoadedModel) and not is_module(model):  # an artifact directory, an .onnx file or ONNX bytes
        from .usermodel import as_model

        model = as_model(model)
    x = _one_row_as_rows(x)
    small = model.small if isinstance(model, LoadedModel) else None
    # A model with a small-batch member takes its rows through the Python preprocessing: the member has its own
    # raw-row graph, or none (a PyTorch member), so the encoded rows are what both runtimes share.
    raw = raw_numeric_rows(model, x) if small is None else None
    x = raw if raw is not None else raw_rows_to_inputs(model, x)
    if len(x) == 0:
        return np.zeros((0, model.spec.num_classes) if isinstance(model, LoadedModel) else (0,), np.float32)
    inputrange.check(model, x)  # rows at another scale than training's (0..255 pixels for [0, 1]): one warning
    if small is not None and _call_size(batch_size, len(x), call_rows) < model.spec.serve["below_batch"]:
        model = small
    run = _runner(model, raw is not None, device)
    return np.concatenate([run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _check_rows(value, name: str) -> None:
    """One line before any work for a row count that is no whole number above 0: 0, -1 or 2.5 would otherwise
    fail deep in the batching (a numpy integer is one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ToolkitError(f"{name} must be a whole number of rows, at least 1, got {value!r}")


def _width(x) -> int | None:
    """The number of columns of a 2-D array (or list of rows), else None (ragged rows included)."""
    try:
        shape = np.shape(x)
    except ValueError:  # ragged rows: said where they are read as numbers
        return None
    return shape[1] if len(shape) == 2 else None


def _one_row_as_rows(x):
    """One row given alone (a pandas Series such as `frame.iloc[0]`, or a dict of column: value) as a batch of
    one row; read as an array, a Series of text and numbers said "cannot be read as numbers"."""
    if type(x).__name__ == "Series":
        import pandas as pd

        return pd.DataFrame([x.to_dict()])
    return [x] if isinstance(x, dict) else x


def batch_dependent(spec: ModelSpec) -> bool:
    """Whether a model's answers depend on the rows that share a call (`dynamic_recipe` of its lineage)."""
    return dynamic_recipe((spec.lineage or {}).get("recipe"))


def dynamic_recipe(recipe) -> bool:
    """Whether a compression recipe makes an int8-dynamic graph (itself, a step of a chain, or a member of a routed
    model): one that quantizes each call's activations with that call's own scale."""
    if not isinstance(recipe, dict):
        return False
    steps = recipe.get("steps")  # a chain's step recipes; an int in prune-unstructured recipes saved before `rounds`
    parts = [*(steps if isinstance(steps, list) else []), recipe.get("large"), recipe.get("small")]
    return recipe.get("method") == "int8-dynamic" or any(dynamic_recipe(part) for part in parts)


def _call_size(batch_size: int, rows: int, call_rows: int | None) -> int:
    """The call size that routes a whole `predict` (see there): one member for every call it makes."""
    return min(batch_size, rows) if call_rows is None else call_rows


def by_size(large, small, below: int):
    """x -> small(x) on fewer than `below` rows, large(x) otherwise: a routed model's dispatch, one length test
    and nothing more (a call at batch 1 is about 10 us, where each extra Python call costs 1-3%)."""
    return lambda x: small(x) if len(x) < below else large(x)


def is_module(x) -> bool:
    """Whether `x` is a `torch.nn.Module`, without importing PyTorch: nothing is one before PyTorch is imported."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.nn.Module)


def refuse_frozen(module) -> None:
    """One line for a frozen TorchScript module: torch.jit.freeze inlines the weights and drops the module state
    (no parameters, no training mode) that predicting, explaining and compressing use."""
    if not hasattr(module, "training"):
        raise ToolkitError("a frozen TorchScript module (torch.jit.freeze) has no parameters or modes the toolkit "
                           "can work with: pass the module before freezing (torch.jit.script's result, or the "
                           "nn.Module itself)")


def _runner(model, raw: bool, device: str | None):
    """chunk -> float32 logits in the model's runtime (ONNX Runtime or PyTorch, without gradients)."""
    if isinstance(model, LoadedModel) and model.runtime == "onnxruntime":
        session = model.raw_onnx_session() if raw else model.onnx_session()
        run = first_output(session)
        if session.get_outputs()[0].type == "tensor(float)":  # already float32: no conversion call
            return run
        return lambda chunk: run(chunk).astype(np.float32, copy=False)
    import torch

    module = model.module if isinstance(model, LoadedModel) else model
    refuse_frozen(module)
    tensor = next(iter(module.parameters()), None)
    tensor = tensor if tensor is not None else next(iter(module.buffers()), None)
    device = device or (tensor.device if tensor is not None else "cpu")
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32

    from .usermodel import modes_kept

    def run(chunk):
        # each submodule's own flag comes back, not the root's: a BatchNorm frozen in eval mid fine-tuning stays so
        with modes_kept(module), torch.inference_mode():
            module.eval()
            # a memory-mapped file's rows are read-only: torch warns on those, so they are copied (one batch)
            chunk = chunk if chunk.flags.writeable else np.array(chunk)
            out = module(torch.from_numpy(chunk).to(device=device, dtype=dtype))
        if not isinstance(out, torch.Tensor):
            raise ToolkitError(f"the model returns a {type(out).__name__}; the toolkit needs logits of shape "
                               "(batch, classes), one tensor")
        return out.float().cpu().numpy()
    return run


def raw_rows_to_inputs(model, x) -> np.ndarray:
    """The model's input array: raw table rows go through the preprocessing recorded at training."""
    table = model.spec.preprocessing.get("table") if isinstance(model, LoadedModel) else None
    if table is not None and _is_raw(table, x):
        from .preprocess import as_frame, transform

        return transform(table, as_frame(table, x), "raw rows")
    if table is not None and _width(x) not in (None, len(table["columns"]), len(table["outputs"])):
        # an array with the target still in it: the column count is the problem, not its text cells
        raise ToolkitError(f"rows of {_width(x)} columns: the model takes raw rows of {len(table['columns'])} "
                           f"columns ({', '.join(table['columns'][:8])}{', ...' if len(table['columns']) > 8 else ''})"
                           f" or encoded rows of {len(table['outputs'])}; drop the other columns (the target?) or "
                           "pass a DataFrame, whose columns are picked by name")
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:  # text cells, ragged rows
        raise ToolkitError(f"inputs cannot be read as numbers: {str(exc).splitlines()[0]}") from None
    if isinstance(model, LoadedModel) and (x.ndim == 0 or (len(x) and x.shape[1:] != tuple(model.spec.input_shape))):
        raise ToolkitError(f"inputs of shape {x.shape} have per-sample shape {x.shape[1:]}, the model expects "
                           f"{tuple(model.spec.input_shape)} (a batch of N rows is (N, "
                           f"{', '.join(map(str, model.spec.input_shape))}))")
    return x


def raw_numeric_rows(model, x) -> np.ndarray | None:
    """Raw numeric rows as the float32 matrix an ONNX variant's `model.raw.onnx` takes (the table's columns in
    order, missing cells NaN), or None where that file does not apply: no such file, rows already encoded,
    or cells the Python preprocessing must judge (text, infinities), so its error message is the one given."""
    spec = model.spec if isinstance(model, LoadedModel) else None
    if spec is None or spec.runtime != "onnxruntime" or not (spec.onnx or {}).get("raw_file"):
        return None
    table = spec.preprocessing.get("table")
    if table is None or not _is_raw(table, x):
        return None
    import pandas as pd

    from .preprocess import as_frame

    frame = as_frame(table, x, "raw rows")
    used = {s["column"] for s in table["steps"]}
    out = np.full((len(frame), len(table["columns"])), np.nan, dtype=np.float32)
    for j, name in enumerate(table["columns"]):
        if name not in frame.columns:
            if name in used:
                return None
            continue  # a dropped column the graph never reads
        column = frame[name]
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(values).any() or (name in used and (np.isnan(values) != column.isna().to_numpy()).any()):
            return None
        out[:, j] = values
    return out


def _is_raw(table: dict, x) -> bool:
    if type(x).__name__ == "DataFrame" or (isinstance(x, (list, tuple)) and x and isinstance(x[0], dict)):
        return True
    shape = np.shape(x)
    return len(shape) == 2 and shape[1] == len(table["columns"]) and (
        shape[1] != len(table["outputs"]) or np.asarray(x).dtype.kind not in "biuf")


def accuracy(model, x, y, batch_size: int = PREDICT_BATCH) -> float:
    """Top-1 accuracy in [0, 1]."""
    if len(y) == 0:
        return float("nan")
    return float((predict(model, x, batch_size).argmax(axis=1) == np.asarray(y)).mean())
