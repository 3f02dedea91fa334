"""The original model a compress run kept (no variant won): how result.json names it, and how predict finds it.

Runs are copied and moved, and so are the models they were made from. An absolute path alone served a copy of
a pipeline run with the source run's train/ (retrained since, perhaps: another model, silently). So result.json
names the kept original by its path relative to the run directory (`../train` in a pipeline run) and by a
checksum of that model, and `parent` keeps the absolute path it was read from. The first of the two places that
holds that very model serves; another model there is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .artifact import MODEL_JSON, sha256_file
from .errors import ToolkitError
from .fileio import read_json


def spec_checksum(spec: dict) -> str | None:
    """A checksum of an artifact's model: over the checksums its model.json records of the files that compute
    (weights, ONNX graph, small-batch member), which loading checks the files against. None where it records
    none. Read from the model in memory at compress time: a pipeline's train/ is not yet in its place then."""
    files = [(spec.get(key) or {}).get(name) for key, name in (("weights", "sha256"), ("onnx", "sha256"),
                                                                 ("serve", "sha256"))]
    return hashlib.sha256(json.dumps(files).encode()).hexdigest() if any(files) else None


def checksum_at(where: Path) -> str | None:
    """The checksum of the model at `where` (an artifact directory: `spec_checksum` of its model.json; an ONNX
    file: the file's own); None where there is none."""
    try:
        if where.is_dir():
            if not (where / MODEL_JSON).is_file():
                return None
            spec = read_json(where / MODEL_JSON, "model.json")
            return spec_checksum(spec) if isinstance(spec, dict) else None
        return sha256_file(where) if where.is_file() else None
    except (OSError, ToolkitError):  # unreadable, or a name too long to be a path (a module's printed form)
        return None


def record(model, run_dir: Path | None) -> tuple[str, str | None]:
    """(path, checksum) naming the kept original `model` in result.json: its path relative to the run directory
    `run_dir` (where that lands once committed, `rundir.committed`) where it has a checksum and a run is
    written, else its `source` as it is (a model in memory has neither)."""
    from .rundir import committed

    if model.path is not None:
        digest = spec_checksum(model.spec.to_dict())
    else:  # a user's ONNX file (or a module, which has no file)
        digest = checksum_at(Path(model.source)) if Path(model.source).is_absolute() else None
    if digest is None or run_dir is None:
        return model.source, digest
    # both resolved: `..` in a path is read from the run's real place, not through a symlink to it
    return os.path.relpath(Path(model.source).resolve(), committed(Path(run_dir).resolve())), digest


def find(run: Path, chosen: dict, parent) -> Path:
    """The kept original of the compress run `run`, from its result.json's `chosen` and `parent`.

    A record with a checksum serves the first place holding that model: the path relative to the run (a copied
    pipeline run: its own train/), then `parent`. Without one (result.json before schema 8) the recorded path
    serves as it is.

    Raises:
        ToolkitError: one line: the original is in neither place, or what is there now is another model.
    """
    path, digest = chosen["path"], chosen.get("checksum")
    if not digest:
        if checksum_at(Path(path)) is not None or (Path(path) / MODEL_JSON).is_file():
            return Path(path)
        raise ToolkitError(f"{run}: the run kept its original model, {path}, which is no longer there")
    places = list(dict.fromkeys([run / path, *([Path(parent)] if isinstance(parent, str) else [])]))
    for place in places:
        if checksum_at(place) == digest:
            return place
    there = [os.path.normpath(p) for p in places if checksum_at(p) is not None]
    if there:
        raise ToolkitError(f"{run}: the run kept its original model, but {there[0]} holds another model now (its "
                           "checksum differs from the one recorded at compress); predict with it by its own path "
                           "if it is the model meant, or compress it again")
    raise ToolkitError(f"{run}: the run kept its original model, {parent}, which is no longer there "
                       f"(nor at {os.path.normpath(run / path)})")
