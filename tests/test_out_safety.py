"""`--out` never costs the user a file: one table of refusals, a property test over generated paths, and the
run-directory guarantees (marker, lock, symlinks, resume honesty, interrupted commits).

Each refusal runs the real entry point `cli.main.main([...])` in-process from a working directory holding the
user's files, a model artifact and a data file, and asserts the bad-input contract: exit code 2, exactly one
`error:` line on stderr, no traceback, and every file and link under the test's directory unchanged byte for
byte (so nothing half-written, no stray `.partial` or lock file either).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compress.run as compress_run
from fake_runs import ctrl_c_in_second_epoch, interrupted_train
import trainers.rundir as rundir
from cli.main import main
from compress.measure import LatencyConfig
from trainers import RunDir, TrainConfig, load_data, train
from trainers.errors import ToolkitError
from trainers.fileio import interrupts_deferred
from trainers.rundir import MARKER, is_run_dir

TINY = {"hidden": [8]}


@dataclass
class Shared:
    model: Path        # a finished train run (iris, mlp)
    interrupted: Path  # a train run stopped by Ctrl-C after epoch 1: it keeps its checkpoint


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
    root = tmp_path_factory.mktemp("shared")
    train("iris", "mlp", TrainConfig(epochs=1, model=TINY), out=root / "model", progress=False)
    interrupted_train(root / "interrupted", 3, TINY)
    return Shared(root / "model", root / "interrupted")


def snapshot(root: Path) -> dict:
    """Every file, directory and link under `root`: relative path -> bytes, '<dir>' or the link's target."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            found[key] = (f"<link {os.readlink(path)}>" if path.is_symlink() else "<dir>" if path.is_dir()
                          else path.read_bytes())
    return found


def make_tree(work: Path, shared: Shared) -> None:
    """The user's working directory: their own files, a model artifact (twice) and a data file."""
    (work / "user" / "sub").mkdir(parents=True)
    (work / "user" / "notes.txt").write_text("my notes\n")
    (work / "user" / "sub" / "table.csv").write_text("a,b\n1,2\n")
    (work / "user" / "page.html").write_text("<html>my page</html>\n")
    (work / "user" / "page.json").write_text('{"mine": true}\n')
    shutil.copytree(shared.model, work / "model")
    shutil.copytree(shared.model, work / "models" / "mlp")
    iris = load_data("iris")
    np.savez(work / "data.npz", x=iris.x_train, y=iris.y_train)


def assert_one_error_line(err: str, expected: str) -> None:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("error: "), f"not one 'error:' line: {err!r}"
    assert expected.lower() in err.lower(), f"{expected!r} not in {err!r}"


TRAIN = ["train", "iris", "--model", "mlp", "--epochs", "1", "--arch", json.dumps(TINY)]
RESUME = ["train", "iris", "--model", "mlp", "--epochs", "3", "--arch", json.dumps(TINY), "--out", "run", "--resume"]


def _link(work: Path, name: str, target: str) -> None:
    (work / name).symlink_to(target)


def _copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)


def _scored(work: Path, name: str, features: bool) -> None:
    """A file of the user's whose header starts as the toolkit's predictions do: the predictions of the model's
    classes joined to the rows they came from (`features`), or with a column of the user's notes added."""
    from trainers import load_model

    spec = load_model(work / "model").spec
    columns = ["predicted", "predicted_index", *(f"p_{c}" for c in spec.class_names)]
    extra = list(spec.feature_names) if features else ["my_note"]
    row = [spec.class_names[0], "0", *(["0.5"] * len(spec.class_names))] + ["1.0" if features else "checked"] * len(extra)
    (work / name).write_text(",".join(columns + extra) + "\n" + ",".join(row) + "\n")


# case name -> (setup(work, shared), argv, the part of the error line that says why)
CASES: dict[str, tuple[Callable, list, str]] = {
    "--overwrite on a directory of the user's": (
        None, [*TRAIN, "--out", "user", "--overwrite"], "not written by the toolkit"),
    "--out . --overwrite": (None, [*TRAIN, "--out", ".", "--overwrite"], "is the current directory"),
    "--out ..": (None, [*TRAIN, "--out", ".."], "a parent of the current directory"),
    "--out the working directory's absolute path": (None, [*TRAIN, "--out", "<cwd>", "--overwrite"],
                                                     "is the current directory"),
    "train --out a directory holding the data": (
        None, ["train", "data.npz", "--model", "mlp", "--epochs", "1", "--out", ".", "--overwrite"], "current"),
    "train --out holds the data file --overwrite": (
        lambda w, s: shutil.copy(w / "data.npz", w / "user" / "d.npz"),
        ["train", "user/d.npz", "--model", "mlp", "--epochs", "1", "--out", "user", "--overwrite"],
        "holds the input"),
    "compress --out the input itself --overwrite": (
        None, ["compress", "model", "--data", "iris", "--out", "model", "--overwrite"], "is the input"),
    "compress --out a parent of the input --overwrite": (
        None, ["compress", "models/mlp", "--data", "iris", "--out", "models", "--overwrite"], "holds the input"),
    "compress --out inside the input": (
        None, ["compress", "model", "--data", "iris", "--out", "model/compressed"], "inside the input"),
    "pipeline --model DIR --out that model --overwrite": (
        None, ["pipeline", "iris", "--model", "model", "--out", "model", "--overwrite"], "is the input"),
    "pipeline --model DIR --out inside that model": (
        None, ["pipeline", "iris", "--model", "model", "--out", "model/x"], "inside the input"),
    "explain --out a compared variant --overwrite": (
        None, ["explain", "model", "--data", "iris", "--compare", "models/mlp", "--out", "models/mlp", "--overwrite"],
        "is the input"),
    "report --out the artifact's model.json": (None, ["report", "model", "--out", "model/model.json"],
                                               "did not write"),
    "report --out the weights": (None, ["report", "model", "--out", "model/model.safetensors"], "did not write"),
    "report --out beside a JSON of the user's": (None, ["report", "model", "--out", "user/page.html"],
                                                 "did not write"),
    "pipeline [report] out names the weights": (
        lambda w, s: (w / "c.toml").write_text('[report]\nout = "train/model.safetensors"\n'),
        ["pipeline", "iris", "--model", "mlp", "--config", "c.toml", "--out", "new"], "must not name a file"),
    "pipeline [report] out names the run record": (
        lambda w, s: (w / "c.toml").write_text('[report]\nout = "pipeline.json"\n'),
        ["pipeline", "iris", "--model", "mlp", "--config", "c.toml", "--out", "new"], "must not name a file"),
    "--out a dangling symlink": (lambda w, s: _link(w, "gone", "nowhere/run"), [*TRAIN, "--out", "gone"],
                                 "symlink to a missing"),
    "--out a symlink to the user's directory --overwrite": (
        lambda w, s: _link(w, "link", "user"), [*TRAIN, "--out", "link", "--overwrite"], "not written by the toolkit"),
    "a symlinked <out>.partial": (lambda w, s: _link(w, "new.partial", "user"), [*TRAIN, "--out", "new"],
                                  "is a symlink"),
    "a user's directory named <out>.partial": (lambda w, s: _copy(w / "user", w / "new.partial"),
                                               [*TRAIN, "--out", "new"], "not written by the toolkit"),
    "an interrupted run's checkpoint in <out>.partial": (
        lambda w, s: _copy(s.interrupted, w / "run.partial"), [*TRAIN, "--out", "run"], "--resume"),
    "an interrupted run in --out": (lambda w, s: _copy(s.interrupted, w / "run"), [*TRAIN, "--out", "run"],
                                    "--resume"),
    "--resume with another --seed": (lambda w, s: _copy(s.interrupted, w / "run"), [*RESUME, "--seed", "3"],
                                     "--seed 0, not 3"),
    "--resume of a killed run's <out>.partial with another --seed": (
        lambda w, s: _copy(s.interrupted, w / "run.partial"), [*RESUME, "--seed", "3"], "--seed 0, not 3"),
    "--resume with another --arch": (
        lambda w, s: _copy(s.interrupted, w / "run"),
        ["train", "iris", "--model", "mlp", "--epochs", "3", "--arch", '{"hidden": [16]}', "--out", "run", "--resume"],
        "--arch"),
    "--overwrite on a run of the toolkit's holding a file of the user's": (
        lambda w, s: (_copy(s.model, w / "run"), (w / "run" / "mine.txt").write_text("mine\n")),
        [*TRAIN, "--out", "run", "--overwrite"], "holds files the toolkit did not write (mine.txt)"),
    "predict --out a file of the user's": (None, ["predict", "model", "data.npz", "--out", "user/notes.txt"],
                                           "exists; --overwrite replaces it if it holds predictions"),
    "predict --out the input rows --overwrite": (
        None, ["predict", "model", "data.npz", "--out", "data.npz", "--overwrite"], "is the data file being predicted"),
    "predict --out the input rows, predictions joined to the features, --overwrite": (
        lambda w, s: _scored(w, "scored.csv", features=True),
        ["predict", "model", "scored.csv", "--out", "scored.csv", "--overwrite"], "is the data file being predicted"),
    "predict --out a hard link to the input rows --overwrite": (
        lambda w, s: os.link(w / "data.npz", w / "user" / "rows.npz"),
        ["predict", "model", "data.npz", "--out", "user/rows.npz", "--overwrite"], "is the data file being predicted"),
    "predict --out predictions the user annotated --overwrite": (
        lambda w, s: _scored(w, "user/preds.csv", features=False),
        ["predict", "model", "data.npz", "--out", "user/preds.csv", "--overwrite"], "does not hold predictions"),
    "predict --out the model's model.json --overwrite": (
        None, ["predict", "model", "data.npz", "--out", "model/model.json", "--overwrite"], "does not hold predictions"),
    "predict --out a directory": (None, ["predict", "model", "data.npz", "--out", "user"], "is a directory"),
    "predict --variant a path": (None, ["predict", "model", "data.npz", "--variant", "../models/mlp"],
                                 "not a path"),
    "--resume with other data": (
        lambda w, s: _copy(s.interrupted, w / "run"),
        ["train", "data.npz", "--model", "mlp", "--epochs", "3", "--arch", json.dumps(TINY), "--out", "run",
         "--resume"], "data of fingerprint"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_out_refusal(case, shared, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    make_tree(work, shared)
    setup, argv, expected = CASES[case]
    if setup is not None:
        setup(work, shared)
    monkeypatch.chdir(work)
    argv = [str(work) if a == "<cwd>" else a for a in argv]
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code}: {err}"
    assert_one_error_line(err, expected)
    assert snapshot(tmp_path) == before, "a file changed, appeared or vanished"


def test_a_second_run_into_a_locked_directory_is_refused_at_once(shared, tmp_path, monkeypatch, capsys):
    from filelock import FileLock

    monkeypatch.chdir(tmp_path)
    shutil.copytree(shared.model, tmp_path / "run")
    with FileLock(tmp_path / ".run.lock"):
        before = snapshot(tmp_path)
        capsys.readouterr()
        assert main([*TRAIN, "--out", "run", "--overwrite"]) == 2
        assert_one_error_line(capsys.readouterr().err, "another toolkit run is writing")
        assert snapshot(tmp_path) == before


def test_symlinked_out_is_written_through_and_stays_a_link(shared, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(shared.model, tmp_path / "target")
    (tmp_path / "link").symlink_to("target")
    assert main([*TRAIN, "--out", "link", "--overwrite", "--seed", "4"]) == 0
    assert (tmp_path / "link").is_symlink() and os.readlink(tmp_path / "link") == "target"
    assert json.loads((tmp_path / "target" / "config.json").read_text())["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]  # no .old, .partial or lock left


def test_every_run_directory_carries_its_marker(shared):
    for run, kind in ((shared.model, "train"), (shared.interrupted, "train")):
        assert is_run_dir(run) and json.loads((run / MARKER).read_text())["kind"] == kind


def test_report_rewrites_its_own_files_but_no_one_elses(shared, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(shared.model, run)
    assert main(["report", str(run)]) == 0
    assert main(["report", str(run)]) == 0  # its own report.html, report.json and MODEL_CARD.md: rewritten
    card = run / "MODEL_CARD.md"
    card.write_text(card.read_text().replace("license: unknown", "license: apache-2.0"))
    assert main(["report", str(run)]) == 0  # the license its owner set in the card survives the rewrite
    assert "license: apache-2.0" in card.read_text() and "license: unknown" not in card.read_text()
    own = "---\nlicense: mit\n---\n# Model card: my hand-written card\n\nApproved by legal.\n"
    card.write_text(own)
    capsys.readouterr()
    assert main(["report", str(run)]) == 2   # a card of the user's, titled like the toolkit's: refused
    assert_one_error_line(capsys.readouterr().err, "did not write")
    assert card.read_text() == own
    card.unlink()
    (run / "report.html").write_text("<html>the user's page</html>")
    before = snapshot(run)
    capsys.readouterr()
    assert main(["report", str(run)]) == 2
    assert_one_error_line(capsys.readouterr().err, "did not write")
    assert snapshot(run) == before


# ---------------------------------------------------------------- interrupts and killed commits


@pytest.fixture
def ctrl_c_raises():
    """Python's own Ctrl-C handler for the test, whatever an earlier test or library left installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_the_commit_waits_until_the_new_run_is_in_place(tmp_path, monkeypatch, ctrl_c_raises):
    out = tmp_path / "run"
    with RunDir(out, kind="test") as first:
        (first.path / "a.txt").write_text("first")
        first.commit()
    real = rundir.commit_directory

    def interrupted_commit(staging, final, **kwargs):
        # arrives between the renames: deferred until the commit is done. raise_signal delivers it to this thread
        # at once; os.kill may hand it to another of the process's threads, to reach Python at some later point
        signal.raise_signal(signal.SIGINT)
        real(staging, final, **kwargs)

    monkeypatch.setattr(rundir, "commit_directory", interrupted_commit)
    second = RunDir(out, kind="test", overwrite=True)
    (second.path / "a.txt").write_text("second")
    with pytest.raises(KeyboardInterrupt):
        second.commit()
    assert (out / "a.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_interrupts_deferred_delivers_the_signal_after_the_block(ctrl_c_raises):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("the block finished")
    assert done == ["the block finished"]


def test_a_commit_killed_between_its_renames_is_undone_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    with RunDir(out, kind="test") as first:
        (first.path / "a.txt").write_text("previous")
        first.commit()
    os.replace(out, tmp_path / ".run.old-12345")  # what a SIGKILL after the first rename leaves
    with pytest.raises(ToolkitError, match="--overwrite"):
        RunDir(out, kind="test")
    assert (out / "a.txt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _busy_when_renamed(monkeypatch, busy: Path) -> None:
    """os.replace as on a mount point (a container's volume): `busy` itself cannot be renamed (EBUSY)."""
    import errno

    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(src) == busy:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(src), None, str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_an_existing_empty_out_is_filled_in_place_so_a_mount_point_works_and_keeps_its_owner_and_mode(
        tmp_path, monkeypatch):
    out = tmp_path / "volume"
    out.mkdir()
    out.chmod(0o2770)  # the user's mode and setgid group: a new directory in its place would lose them
    before = out.stat()
    _busy_when_renamed(monkeypatch, out)
    with RunDir(out, kind="test") as run:
        (run.path / "sub").mkdir()
        (run.path / "sub" / "a.txt").write_text("run")
        run.commit()
    after = out.stat()
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_gid) == (
        before.st_ino, before.st_mode, before.st_uid, before.st_gid)
    assert (out / "sub" / "a.txt").read_text() == "run" and is_run_dir(out)
    assert json.loads((out / MARKER).read_text())["files"] == ["sub/a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume"]  # no .partial, no lock left


class _Killed(BaseException):
    """A SIGKILL: no cleanup runs."""


def _other_filesystem(monkeypatch, full: str | None = None) -> None:
    """`fileio`'s renames as into a mount point (EXDEV: each entry is copied), the disk full once `full` is copied."""
    import errno

    from trainers import fileio

    def rename(src, dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))

    real_copy = shutil.copy2

    def copy2(src, dst, **kwargs):
        if Path(src).name == full:
            Path(dst).write_bytes(b"half")  # what a full disk leaves of it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(fileio.os, "rename", rename)
    monkeypatch.setattr(fileio.shutil, "copy2", copy2)


@pytest.mark.parametrize("full", ["b.txt", MARKER])
def test_a_fill_of_another_filesystem_that_runs_out_of_space_leaves_out_empty_and_the_run_whole(
        tmp_path, monkeypatch, full):
    out = tmp_path / "volume"
    out.mkdir()
    run = RunDir(out, kind="test")
    for name in ("a.txt", "b.txt"):
        (run.path / name).write_text(name)
    (run.path / "sub").mkdir()
    (run.path / "sub" / "c.txt").write_text("c")
    _other_filesystem(monkeypatch, full)
    with pytest.raises(ToolkitError, match=r"No space left on device; it is kept in .*volume\.partial"):
        with run:
            run.commit()
    assert list(out.iterdir()) == []  # nothing half-written in --out, and all of the run where the line says
    assert sorted(p.relative_to(run.staging).as_posix() for p in run.staging.rglob("*")) == [
        MARKER, "a.txt", "b.txt", "sub", "sub/c.txt"]
    assert is_run_dir(run.staging)


def test_a_fill_of_another_filesystem_moves_every_entry_and_removes_the_staging(tmp_path, monkeypatch):
    out = tmp_path / "volume"
    out.mkdir()
    _other_filesystem(monkeypatch)
    with RunDir(out, kind="test") as run:
        (run.path / "sub").mkdir()
        (run.path / "sub" / "c.txt").write_text("c")
        run.commit()
    assert (out / "sub" / "c.txt").read_text() == "c" and is_run_dir(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume"]


def test_a_fill_that_fails_on_its_filesystem_puts_back_what_it_renamed(tmp_path, monkeypatch):
    import errno

    from trainers import fileio

    out = tmp_path / "volume"
    out.mkdir()
    run = RunDir(out, kind="test")
    for name in ("a.txt", "b.txt"):
        (run.path / name).write_text(name)
    real = os.rename

    def rename(src, dst):
        if Path(src).name == "b.txt":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(src, dst)

    monkeypatch.setattr(fileio.os, "rename", rename)
    with pytest.raises(ToolkitError, match="Input/output error; it is kept in"):
        with run:
            run.commit()
    assert list(out.iterdir()) == [] and (run.staging / "a.txt").read_text() == "a.txt"


class _Killed(BaseException):
    """A SIGKILL: no cleanup runs."""


@pytest.mark.parametrize("copied", [False, True])
def test_a_fill_killed_midway_is_finished_by_the_next_run(tmp_path, monkeypatch, copied):
    from trainers import fileio

    out = tmp_path / "run"
    out.mkdir()
    run = RunDir(out, kind="test")
    for name in ("a.txt", "b.txt"):
        (run.path / name).write_text(name)
    if copied:
        _other_filesystem(monkeypatch)
    real_place = fileio._place

    def place(entry, target):
        if entry.name == "b.txt":
            if copied:
                (target.parent / ".b.txt.moving").write_text("b.t")  # a copy cut short
            raise _Killed
        return real_place(entry, target)

    monkeypatch.setattr(fileio, "_place", place)
    monkeypatch.setattr(fileio, "_take_back", lambda placed: None)  # a kill runs no cleanup
    with pytest.raises(_Killed):
        run.commit()
    monkeypatch.undo()
    assert not is_run_dir(out) and (out / "a.txt").exists()  # half moved in: no marker, so no finished run
    with pytest.raises(ToolkitError, match="--overwrite"):  # the next run finishes the move, then finds a run
        RunDir(out, kind="test")
    assert is_run_dir(out) and sorted(p.name for p in out.iterdir()) == [MARKER, "a.txt", "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_previous_run_that_cannot_be_renamed_aside_is_one_line_and_the_new_run_is_kept(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with RunDir(out, kind="test") as first:
        (first.path / "a.txt").write_text("previous")
        first.commit()
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == out)
    with pytest.raises(ToolkitError, match="is a mount point holding a previous run"):  # before any work
        RunDir(out, kind="test", overwrite=True)
    monkeypatch.setattr(os.path, "ismount", lambda path: False)  # a bind mount ismount does not see
    _busy_when_renamed(monkeypatch, out)
    with pytest.raises(ToolkitError, match=r"cannot move the finished run into .*: Device or resource busy; "
                                           r"it is kept in .*run\.partial"):
        with RunDir(out, kind="test", overwrite=True) as second:
            (second.path / "a.txt").write_text("new")
            second.commit()
    assert (out / "a.txt").read_text() == "previous" and (tmp_path / "run.partial" / "a.txt").read_text() == "new"


def test_a_write_that_hits_the_file_size_limit_names_its_file(tmp_path, monkeypatch):
    import errno

    from trainers.errors import describe
    from trainers.fileio import atomic_write_bytes

    def fsync(fd):  # what `ulimit -f` or a full disk gives: an OSError naming no file
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(tmp_path / "model.safetensors", b"weights")
    assert describe(caught.value) == (f"cannot write {tmp_path / 'model.safetensors'}: File too large", 2)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- --out changed while the run was made


def _user_notes(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("my precious notes")


def _refused_commit(run: RunDir) -> None:
    (run.path / "a.txt").write_text("new")
    with pytest.raises(ToolkitError, match=r"changed while the run was made .*nothing there was replaced: the "
                                           r"finished run is kept in .*\.partial"):
        with run:
            run.commit()
    assert (run.staging / "a.txt").read_text() == "new" and is_run_dir(run.staging)


def test_a_folder_that_appears_at_out_during_the_run_is_never_deleted(tmp_path):
    out = tmp_path / "run"
    run = RunDir(out, kind="test")
    _user_notes(out)  # the user (or another tool) makes --out while the run trains
    _refused_commit(run)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_an_empty_out_the_user_fills_during_the_run_is_kept_with_its_mode(tmp_path):
    out = tmp_path / "volume"
    out.mkdir()
    out.chmod(0o2770)
    before = out.stat()
    run = RunDir(out, kind="test")
    _user_notes(out)
    _refused_commit(run)
    after = out.stat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_refuses_at_the_commit_files_added_to_the_previous_run_during_the_run(tmp_path):
    out = tmp_path / "run"
    with RunDir(out, kind="test") as first:
        (first.path / "a.txt").write_text("previous")
        first.commit()
    run = RunDir(out, kind="test", overwrite=True)
    _user_notes(out)
    _refused_commit(run)
    assert (out / "notes.txt").exists() and (out / "a.txt").read_text() == "previous" and is_run_dir(out)


def test_a_file_added_after_the_commit_checked_out_is_caught_once_the_previous_run_is_aside(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with RunDir(out, kind="test") as first:
        (first.path / "a.txt").write_text("previous")
        first.commit()
    real = rundir.commit_directory

    def late_user(staging, final, **kwargs):  # the user's file arrives between the check and the renames
        _user_notes(final)
        real(staging, final, **kwargs)

    monkeypatch.setattr(rundir, "commit_directory", late_user)
    _refused_commit(RunDir(out, kind="test", overwrite=True))
    assert (out / "notes.txt").exists() and (out / "a.txt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.partial"]  # nothing left aside


def test_the_cli_refuses_the_commit_in_one_line_with_exit_2(tmp_path, monkeypatch, capsys):
    out = tmp_path / "m"
    real = rundir.commit_directory

    def user_made_out(staging, final, **kwargs):
        _user_notes(final)
        real(staging, final, **kwargs)

    monkeypatch.setattr(rundir, "commit_directory", user_made_out)
    assert main(["train", "iris", "--model", "mlp", "--epochs", "1", "--arch", json.dumps(TINY),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err  # after the run's own warnings: one error line
    assert err.count("error: ") == 1 and "kept in" in err.splitlines()[-1] and "Traceback" not in err
    assert "before running again with this --out" in err.splitlines()[-1]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and is_run_dir(tmp_path / "m.partial")


# ---------------------------------------------------------------- property: nothing outside the run changes


COMPONENTS = ["user", "model", "models", "mlp", "new", "prev", "..", ".", "notes.txt", "model.json", "link", "gone",
              "sub"]


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(parts=st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3), overwrite=st.booleans(),
       absolute=st.booleans())
def test_no_file_outside_the_run_directory_ever_changes(shared, parts, overwrite, absolute):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        work = root / "a" / "b" / "work"  # deep enough that '..' x 3 stays inside `root`
        work.mkdir(parents=True)
        make_tree(work, shared)
        shutil.copytree(shared.model, work / "prev")  # an earlier run of the toolkit: --overwrite may replace it
        (work / "link").symlink_to("user")
        (work / "gone").symlink_to("missing")
        out = os.path.join(*parts)
        argv = ["compress", "model", "--data", "iris", "--method", "fp16", "--out", str(work / out) if absolute else out]
        before = snapshot(root)
        cwd = os.getcwd()
        os.chdir(work)
        try:
            with pytest.MonkeyPatch.context() as patch:  # what is timed does not matter here: time it briefly
                patch.setattr(compress_run, "LatencyConfig", lambda budget_s, device: LatencyConfig(1, 1, 2, 0.0, device=device))
                code = main(argv + (["--overwrite"] if overwrite else []))
        finally:
            os.chdir(cwd)
        after = snapshot(root)
        assert code in (0, 2), code
        if code == 2:
            assert after == before
            return
        final = (work / out).resolve()
        assert is_run_dir(final)

        def outside(key: str) -> bool:
            path = root / key
            where = Path(os.path.realpath(path.parent)) / path.name  # the link itself, not its target
            return not where.is_relative_to(final)

        def kept(tree: dict) -> dict:  # the parents of a new --out may be created; nothing else outside it changes
            return {k: v for k, v in tree.items() if outside(k) and not (v == "<dir>" and final.is_relative_to(root / k))}

        assert kept(after) == kept(before)


def test_predict_overwrites_only_predictions_it_wrote(shared, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    iris = load_data("iris")
    np.savez(tmp_path / "rows.npz", x=iris.x_test)
    assert main(["predict", str(shared.model), "rows.npz", "--out", "p.csv"]) == 0
    first = (tmp_path / "p.csv").read_text()
    assert first.startswith("predicted,predicted_index,")
    (tmp_path / "p.csv").write_text(first[:200])  # still the toolkit's predictions, cut short
    assert main(["predict", str(shared.model), "rows.npz", "--out", "p.csv", "--overwrite"]) == 0
    assert (tmp_path / "p.csv").read_text() == first


def test_predict_does_not_replace_a_file_that_appears_while_it_predicts(shared, tmp_path, monkeypatch, capsys):
    """The target is checked again just before the write: a file of the user's (or another run's predictions)
    written there in the meantime stays. A symlinked --out is written through and stays a link."""
    import trainers.inference as inference

    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "rows.npz", x=load_data("iris").x_test)
    real = inference.stream_file

    def user_writes_meanwhile(*args, **kwargs):
        model, tables = real(*args, **kwargs)

        def then_the_user_writes():  # once the last rows are predicted, before the file is renamed into place
            yield from tables
            (tmp_path / "p.csv").write_text("MY PRECIOUS DATA")
        return model, then_the_user_writes()

    monkeypatch.setattr(inference, "stream_file", user_writes_meanwhile)
    capsys.readouterr()
    assert main(["predict", str(shared.model), "rows.npz", "--out", "p.csv"]) == 2
    assert_one_error_line(capsys.readouterr().err, "appeared while the rows were predicted")
    assert (tmp_path / "p.csv").read_text() == "MY PRECIOUS DATA"
    monkeypatch.setattr(inference, "stream_file", real)
    assert main(["predict", str(shared.model), "rows.npz", "--out", "target.csv"]) == 0
    header = (tmp_path / "target.csv").read_text().splitlines()[0]
    (tmp_path / "target.csv").write_text(header + "\nold,0\n")  # the toolkit's predictions, from an older run
    (tmp_path / "link.csv").symlink_to("target.csv")
    assert main(["predict", str(shared.model), "rows.npz", "--out", "link.csv", "--overwrite"]) == 0
    assert (tmp_path / "link.csv").is_symlink() and "old" not in (tmp_path / "target.csv").read_text()


def test_ctrl_c_in_train_exits_130_and_keeps_the_previous_run(shared, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(shared.model, tmp_path / "run")
    before = snapshot(tmp_path / "run")
    with ctrl_c_in_second_epoch():
        assert main([*TRAIN[:-4], "--epochs", "3", "--arch", json.dumps(TINY), "--out", "run", "--overwrite"]) == 130
    assert snapshot(tmp_path / "run") == before  # the previous run stays as it was
    assert (tmp_path / "run.partial" / "checkpoint.json").is_file()  # the interrupted one, for --resume
    assert "--resume --out" in capsys.readouterr().err
    assert main([*TRAIN[:-4], "--epochs", "3", "--arch", json.dumps(TINY), "--out", "run", "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["epochs_run"] == 3
    assert not (tmp_path / "run.partial").exists()


@pytest.mark.parametrize("command", [["train", "iris", "--model", "mlp", "--epochs", "1"],
                                     ["report", "RUN"]])
def test_an_out_name_that_is_not_utf8_is_refused_before_any_work(command, shared, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = os.fsdecode(b"bad\xff")  # as Python receives `--out $'bad\xff'`: a lone surrogate
    suffix = ".html" if command[0] == "report" else ""
    args = [str(shared.model) if a == "RUN" else a for a in command]
    before = snapshot(shared.model)
    assert main([*args, "--out", bad + suffix]) == 2
    assert_one_error_line(capsys.readouterr().err, "is not valid UTF-8")
    assert list(tmp_path.iterdir()) == [] and snapshot(shared.model) == before


@pytest.mark.parametrize("length, refused", [(255 - 13, False), (255 - 12, True), (245, True)])
def test_an_out_name_too_long_for_the_names_derived_from_it_is_refused_before_any_work(tmp_path, length, refused):
    out = tmp_path / ("n" * length)
    if not refused:
        with RunDir(out, kind="test", overwrite=True) as run:
            run.commit()
        with RunDir(out, kind="test", overwrite=True) as run:  # the previous run swapped out as .NAME.old-PID
            run.commit()
        assert is_run_dir(out)
        return
    with pytest.raises(ToolkitError, match=r"is \d+ bytes: the toolkit stages and swaps .* at most 242 bytes"):
        RunDir(out, kind="test")
    assert list(tmp_path.iterdir()) == []
