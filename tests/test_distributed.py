"""Training in several processes through torch.distributed (torchrun), checked on CPU with gloo.

The launch tests start real processes (`toolkit train --nproc-per-node 2` and an external
`torchrun`), rendezvous on a free port chosen by the OS, and look at what they leave behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from trainers import TrainConfig, TrainingInterrupted, load_model, predict, train
from trainers.distributed import (REPLICA_HASH_ENV, DistContext, LaunchOptions, all_sum, epoch_indices,
                                  per_rank_batch, shard)
from trainers.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=300)


def _artifacts(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("model.safetensors"))


# --- sharding and reductions (in process) -------------------------------------------------------

def test_one_process_shuffle_is_the_single_process_permutation():
    """With one process the sampler gives exactly the permutation the loop always used."""
    generator = torch.Generator().manual_seed(7 * 100_003 + 4)
    expected = torch.randperm(101, generator=generator)
    assert torch.equal(epoch_indices(101, 7 * 100_003, 4, DistContext()), expected)


def test_ranks_share_one_permutation_and_run_the_same_number_of_batches():
    shards = [epoch_indices(101, 3, 2, DistContext(rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 51  # padded to an even split
    assert set(torch.cat(shards).tolist()) == set(range(101))
    single = epoch_indices(101, 3, 2, DistContext())
    interleaved = torch.stack([shards[0][:50], shards[1][:50]], 1).flatten()
    assert torch.equal(interleaved, single[:100])  # rank r takes every other sample of the shared shuffle
    assert not torch.equal(epoch_indices(101, 3, 3, DistContext(rank=0, world_size=2)), shards[0])  # set_epoch


def test_global_batch_is_split_between_ranks():
    assert per_rank_batch(64, DistContext()) == 64
    assert per_rank_batch(64, DistContext(rank=1, world_size=2)) == 32
    assert per_rank_batch(65, DistContext(rank=0, world_size=2)) == 33
    with pytest.raises(ToolkitError, match="smaller than the number of processes"):
        per_rank_batch(2, DistContext(world_size=4))


def test_single_process_helpers_are_identities():
    x = torch.arange(10)
    assert torch.equal(shard(x, DistContext()), x)
    assert torch.equal(shard(x, DistContext(rank=1, world_size=3)), torch.tensor([1, 4, 7]))
    assert all_sum([1.5, 2.0], DistContext(), torch.device("cpu")) == [1.5, 2.0]


def test_launch_options_match_torchrun_command_lines():
    timeouts = "--rdzv-conf=join_timeout=600,timeout=600"
    assert LaunchOptions(2).torchrun_args() == ["--standalone", "--nproc-per-node=2", timeouts]
    assert LaunchOptions(4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29400).torchrun_args() == [
        "--nproc-per-node=4", timeouts, "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29400"]
    for bad, message in ((LaunchOptions(0), "at least 1"), (LaunchOptions(2, nnodes=2), "--master-addr"),
                         (LaunchOptions(2, nnodes=2, node_rank=2, master_addr="h"), "--node-rank")):
        with pytest.raises(ToolkitError, match=message):
            bad.validate()


@pytest.mark.parametrize("args", [["--nproc-per-node", "0"], ["--nproc-per-node", "2", "--nnodes", "2"],
                                  ["--nproc-per-node", "2", "--epochs", "0"], ["--nnodes", "2"]])
def test_bad_launch_options_exit_2_before_starting_processes(args, tmp_path, capsys):
    code = main(["train", "iris", "--model", "mlp", "--out", str(tmp_path / "r"), "--device", "cpu", *args])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "r").exists()


# --- real launches (2 processes, gloo, free port) -------------------------------------------------

def test_two_processes_end_with_identical_replicas_and_write_one_artifact(tmp_path):
    hashes = tmp_path / "hashes"
    done = _run(["-m", "cli.main", "--progress", "lines", "train", "digits", "--model", "mlp", "--epochs", "2",
                 "--device", "cpu", "--nproc-per-node", "2", "--out", "run", "--json"], tmp_path,
                **{REPLICA_HASH_ENV: str(hashes)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torchrun --standalone --nproc-per-node=2" in done.stderr
    digests = {p.name: p.read_text() for p in hashes.iterdir()}
    assert sorted(digests) == ["rank0.sha256", "rank1.sha256"]
    assert digests["rank0.sha256"] == digests["rank1.sha256"]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout  # one result, from rank 0
    result = json.loads(lines[0])
    assert result["processes"] == 2 and result["epochs_run"] == 2 and len(result["history"]) == 2
    assert _artifacts(tmp_path) == [tmp_path / "run"]
    assert not list(tmp_path.glob("*.partial"))
    model = load_model(tmp_path / "run")
    from trainers import load_data

    data = load_data("digits")
    accuracy = float(np.mean(predict(model, data.x_test).argmax(1) == data.y_test))
    rows = len(data.y_train)  # an odd count: the sampler pads one rank with a repeated row, left out of the figures
    assert rows % 2 and all(abs(row["train_accuracy"] * rows - round(row["train_accuracy"] * rows)) < 1e-6
                         for row in result["history"])
    assert accuracy == pytest.approx(result["metrics"]["test_accuracy"], abs=1e-6)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["processes"] == 2


def test_two_processes_train_a_memory_mapped_npy_file(tmp_path):
    """A `.npy` file's splits stay memory-mapped (read batch by batch): the ranks' validation pass summed its figures
    on `x.device`, which such a split lacks, and the job crashed after its first epoch (AttributeError, exit 1)."""
    from trainers import load_data

    digits = load_data("digits")
    x = np.concatenate([digits.x_train, digits.x_val, digits.x_test])
    np.save(tmp_path / "dg.npy", x.astype(np.float32))
    np.save(tmp_path / "dg.labels.npy", np.concatenate([digits.y_train, digits.y_val, digits.y_test]))
    done = _run(["-m", "cli.main", "train", "dg.npy", "--model", "mlp", "--epochs", "2", "--device", "cpu",
                 "--nproc-per-node", "2", "--out", "run", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["processes"] == 2 and [row["epoch"] for row in result["history"]] == [1, 2]
    data = load_data(str(tmp_path / "dg.npy"))
    accuracy = float(np.mean(predict(load_model(tmp_path / "run"), np.asarray(data.x_test)).argmax(1) == data.y_test))
    assert accuracy == pytest.approx(result["metrics"]["test_accuracy"], abs=1e-6) and accuracy > 0.5


def test_plain_command_under_external_torchrun_resumes_an_interrupted_run(tmp_path):
    """An interrupted one-process run, continued by the plain `toolkit train --resume` under torchrun."""
    from fake_runs import ctrl_c_in_epoch

    with ctrl_c_in_epoch(3), pytest.raises(TrainingInterrupted) as stop:
        train("iris", "mlp", TrainConfig(epochs=4, device="cpu"), out=tmp_path / "run", progress=False)
    assert stop.value.result.interrupted and (tmp_path / "run" / "checkpoint.json").is_file()
    done = _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "cli.main", "train",
                 "iris", "--model", "mlp", "--epochs", "4", "--device", "cpu", "--out", "run", "--resume", "--json"],
                tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["processes"] == 2 and not result["interrupted"]
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3, 4]  # epochs 1-2 from the checkpoint
    assert _artifacts(tmp_path) == [tmp_path / "run"]
    assert not (tmp_path / "run" / "checkpoint.json").exists()
    assert load_model(tmp_path / "run").spec.family == "mlp"


def test_bad_input_in_the_workers_exits_2(tmp_path):
    done = _run(["-m", "cli.main", "train", "no_such_data", "--model", "mlp", "--device", "cpu",
                 "--nproc-per-node", "2", "--out", "run"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.splitlines()  # once for the job, and no torchrun log line
    assert len(lines) == 1 and lines[0].startswith("error: unknown data 'no_such_data'"), done.stderr
    assert not (tmp_path / "run").exists()


def test_a_bad_input_line_of_another_rank_alone_is_printed_by_the_launcher(tmp_path, monkeypatch, capsys):
    """The data missing on the second machine only: rank 0 is stopped with no error of its own, so the launcher
    prints rank 1's line, once (a plain torchrun's rank 1 prints it itself, with its rank)."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from cli.common import fail
    from trainers.distributed import ERROR_DIR_ENV, launch

    def run(_args):
        monkeypatch.setenv("RANK", "1")
        with pytest.raises(BaseException):
            fail("data file not found: d.npz")  # what the worker's `fail` does, in the worker's environment
        monkeypatch.setenv("RANK", "0")
        failure = ProcessFailure(local_rank=1, pid=1, exitcode=2, error_file="")
        raise ChildFailedError("cli.main", {1: failure})

    monkeypatch.setattr(torchrun, "run", run)
    assert launch(LaunchOptions(2), ["d.npz"], "cpu", announce=False) == 2
    assert capsys.readouterr().err.splitlines() == ["error: data file not found: d.npz (rank 1)"]
    assert ERROR_DIR_ENV not in os.environ
    # under a plain torchrun (no launcher's folder) rank 1 says it itself once it has outlived rank 0's turn
    monkeypatch.setattr("trainers.errors.RANK_0_GRACE_S", 0)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(BaseException):
        fail("data file not found: d.npz")
    assert capsys.readouterr().err.splitlines() == ["error: data file not found: d.npz (rank 1)"]


@pytest.mark.parametrize("args", [["--bogus"], ["--epochs", "0"]], ids=["usage-error", "bad-value"])
def test_under_a_plain_torchrun_another_rank_waits_silently_for_rank_0(monkeypatch, capsys, args):
    """Every rank finds the same bad input: rank 0 prints it and torchrun's SIGTERM then ends the others during
    their wait, without a line of their own (SIGTERM at its default, not the toolkit's interrupt)."""
    import signal
    import time

    from trainers import errors

    seen = []

    def wait(seconds):
        seen.append((seconds, signal.getsignal(signal.SIGTERM), capsys.readouterr()))

    monkeypatch.setattr(time, "sleep", wait)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv(errors.ERROR_DIR_ENV, raising=False)
    assert main(["train", "digits", "--model", "mlp", "--json", *args]) == 2
    [(seconds, handler, before)] = seen
    assert seconds == errors.RANK_0_GRACE_S and handler is signal.SIG_DFL
    assert before.out == before.err == ""  # nothing printed before rank 0's turn
    after = capsys.readouterr()  # this rank alone found it: its line, with its rank, and --json's object
    assert after.err.count("\n") == 1 and after.err.rstrip().endswith("(rank 1)")
    assert json.loads(after.out)["exit_code"] == 2


def test_an_unexpected_error_on_every_rank_is_one_line_and_one_json_object(tmp_path, monkeypatch, capsys):
    """Only bad input (exit 2) went through `speaks`: an unexpected error (exit 1) or an interrupt (130, 143) was
    printed by every rank, with a JSON object each on stdout."""
    import trainers.fit as fit
    from trainers.errors import ERROR_DIR_ENV

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(fit, "_train", broken)
    monkeypatch.setenv(ERROR_DIR_ENV, str(tmp_path))  # a worker of `launch`
    args = ["train", "iris", "--model", "mlp", "--device", "cpu", "--out", str(tmp_path / "r"), "--json"]
    monkeypatch.setenv("RANK", "1")
    assert main(args) == 1
    assert capsys.readouterr() == ("", "")  # left for the launcher, which prints it only if rank 0 says nothing
    monkeypatch.setenv("RANK", "0")
    assert main(args) == 1
    said = capsys.readouterr()
    message = "unexpected error (RuntimeError): boom (set TOOLKIT_DEBUG=1 for the traceback)"
    assert said.err.splitlines() == [f"error: {message}"]
    assert json.loads(said.out) == {"error": message, "exit_code": 1}
    assert sorted(p.name for p in tmp_path.glob("rank*.txt")) == ["rank0.txt", "rank1.txt"]  # the launcher's folder


def test_a_rank_stopped_because_another_failed_leaves_that_ranks_line_and_code(tmp_path, monkeypatch, capsys):
    """Rank 1 fails alone (an error, exit 1); the launcher then stops rank 0 with SIGTERM. Rank 0's "terminated"
    would hide the cause and give the job exit code 143: the launcher says rank 1's line, code and JSON object."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from cli.common import fail
    from trainers.distributed import launch

    def run(_args):
        monkeypatch.setenv("RANK", "1")
        with pytest.raises(BaseException):
            fail("unexpected error (RuntimeError): CUDA out of memory", 1, as_json=True)
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(BaseException):
            fail("terminated", 143, as_json=True)  # the launcher's SIGTERM, heard by rank 0
        failures = {0: ProcessFailure(local_rank=0, pid=1, exitcode=143, error_file=""),
                    1: ProcessFailure(local_rank=1, pid=2, exitcode=1, error_file="")}
        raise ChildFailedError("cli.main", failures)

    monkeypatch.setattr(torchrun, "run", run)
    assert launch(LaunchOptions(2), ["d.npz", "--json"], "cpu", announce=False) == 1
    said = capsys.readouterr()
    assert said.err.splitlines() == ["error: unexpected error (RuntimeError): CUDA out of memory (rank 1)"]
    assert json.loads(said.out) == {"error": "unexpected error (RuntimeError): CUDA out of memory", "exit_code": 1}


def test_the_first_signal_decides_the_word_and_the_exit_code():
    """A worker that heard Ctrl-C, then the launcher's SIGTERM, said "terminated" (143) in a job that exited 130."""
    import signal

    from trainers.errors import interrupt_code, sigterm_as_interrupt

    with sigterm_as_interrupt():
        for number in (signal.SIGINT, signal.SIGTERM):
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(number)
        assert interrupt_code() == ("interrupted", 130)


def test_a_signal_before_the_first_epoch_of_two_processes_saves_nothing_and_says_it_once(tmp_path):
    """Ctrl-C to the launcher while both ranks are in their first epoch: no model to keep, so nothing is saved;
    one line and one JSON object for the job (every rank printed its own), exit code 130."""
    import signal
    import time

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "noise.npz", x=rng.normal(size=(20000, 16)).astype(np.float32), y=rng.integers(0, 3, 20000))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # two rows a step per rank: the first epoch lasts far longer than the few seconds the test waits
    launcher = subprocess.Popen([sys.executable, "-m", "cli.main", "train", "noise.npz", "--model", "mlp",
                                 "--epochs", "3", "--batch-size", "4", "--device", "cpu", "--nproc-per-node", "2",
                                 "--out", "run", "--json"], cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "run.partial" / "env.json").exists():  # written just before the training loop
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()[-2000:]
            time.sleep(0.1)
        time.sleep(1)
        launcher.send_signal(signal.SIGINT)
        stdout, stderr = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    message = "interrupted before the first epoch ended: there is no model to keep, nothing was saved"
    assert launcher.returncode == 130, stderr[-2000:]
    assert stderr.splitlines() == [f"error: {message}"]
    assert json.loads(stdout) == {"error": message, "exit_code": 130}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise.npz"]  # no run, no .partial, no lock


def test_ctrl_c_of_the_launcher_exits_130(monkeypatch):
    import signal

    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from trainers.distributed import launch

    def run(_args):
        raise SignalException("got signal: 2", sigval=signal.SIGINT)

    monkeypatch.setattr(torchrun, "run", run)
    assert launch(LaunchOptions(2), ["d.npz"], "cpu", announce=False) == 130


def test_ctrl_c_of_the_launcher_waits_for_its_workers_and_says_the_line_rank_0_did_not(tmp_path, monkeypatch,
                                                                                       capsys):
    """A second signal cut torchrun's wait for the workers short: the launcher exited before rank 0 said the job's
    line (the shell read an empty stdout); and where rank 0 had left quietly (a peer gone), no line at all."""
    import signal

    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from cli.common import fail
    from trainers.distributed import launch

    said = tmp_path / "said"

    def run(_args):
        subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(1); open({str(said)!r}, 'w').write('x')"])
        monkeypatch.setenv("RANK", "1")
        with pytest.raises(BaseException):
            fail("interrupted", 130, as_json=True)
        monkeypatch.setenv("RANK", "0")
        raise SignalException("got signal: 2", sigval=signal.SIGINT)

    monkeypatch.setattr(torchrun, "run", run)
    assert launch(LaunchOptions(2), ["d.npz", "--json"], "cpu", announce=False) == 130
    assert said.exists()  # the worker had ended before the launcher returned
    out = capsys.readouterr()
    assert out.err.splitlines() == ["error: interrupted (rank 1)"]
    assert json.loads(out.out) == {"error": "interrupted", "exit_code": 130}


def test_a_failure_on_rank_0_alone_ends_the_job_without_hanging(tmp_path):
    """Only rank 0 finds `--out` occupied; the other rank must not wait for it forever."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("previous results")
    done = _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "cli.main", "train",
                 "iris", "--model", "mlp", "--epochs", "2", "--device", "cpu", "--out", "run"], tmp_path)
    assert done.returncode != 0
    assert "already exists" in done.stderr
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["keep.txt"]


def test_two_processes_reach_the_single_process_accuracy_on_digits(tmp_path):
    """Default settings, `--batch-size` the global batch: 2 processes land within 1 point of 1 process."""
    single = train("digits", "mlp", TrainConfig(device="cpu"), progress=False)
    done = _run(["-m", "cli.main", "train", "digits", "--model", "mlp", "--device", "cpu", "--nproc-per-node", "2",
                 "--out", "run", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    double = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"test accuracy: 1 process {single.metrics['test_accuracy']:.4f}, "
          f"2 processes {double['metrics']['test_accuracy']:.4f}")
    assert abs(single.metrics["test_accuracy"] - double["metrics"]["test_accuracy"]) <= 0.01


def _children(pid: int) -> set[int]:
    """Every descendant of `pid` (Linux /proc)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += sorted(kids - found)
            found |= kids
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _is_worker(pid: int) -> bool:
    try:
        return b"cli.main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux /proc")
def test_workers_end_when_their_launcher_is_killed(tmp_path):
    """SIGKILL the launcher once its workers run: they exit (watchdog, or the orphan check on joining the job)."""
    import signal
    import time

    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    launcher = subprocess.Popen([sys.executable, "-m", "cli.main", "train", "digits", "--model", "mlp", "--device",
                                 "cpu", "--nproc-per-node", "2", "--epochs", "500", "--out", "run"], cwd=tmp_path,
                                env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(workers := [p for p in _children(launcher.pid) if _is_worker(p)]) < 2:  # both workers started
            assert launcher.poll() is None and time.monotonic() < deadline, "the workers never started"
            time.sleep(0.5)
        time.sleep(5)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 180  # a worker still importing torch meets the check when it joins the job
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(_alive(pid) for pid in workers), "orphaned workers still running"
    finally:
        launcher.kill()


def test_amp_flag_reaches_the_config_and_every_launched_process(monkeypatch, tmp_path, capsys):
    """`--amp` (mixed precision on CUDA, off by default) is a TrainConfig field the launched processes must get too."""
    from trainers import distributed

    sent = {}
    monkeypatch.setattr(distributed, "launch", lambda options, argv, device, announce, global_args:
                        sent.update(argv=argv, global_args=global_args) or 0)
    assert main(["--progress", "lines", "train", "iris", "--model", "mlp", "--out", str(tmp_path / "r"), "--device",
                 "cpu", "--amp", "--nproc-per-node", "2", "--oversubscribe"]) == 0
    assert "--amp" in sent["argv"] and sent["global_args"] == ("--progress", "lines")  # toolkit's own options too
    assert main(["train", "iris", "--model", "mlp", "--out", str(tmp_path / "s"), "--device", "cpu",
                 "--nproc-per-node", "2", "--oversubscribe"]) == 0
    assert "--amp" not in sent["argv"]
    # In one process: recorded in config.json (and ignored off CUDA: the CPU run trains in float32).
    capsys.readouterr()
    assert main(["train", "iris", "--model", "mlp", "--out", str(tmp_path / "t"), "--device", "cpu", "--amp",
                 "--epochs", "2"]) == 0
    assert json.loads((tmp_path / "t" / "config.json").read_text())["amp"] is True
    assert "note: --amp (mixed precision) works on CUDA only" in capsys.readouterr().err  # said, not silently


def test_ctrl_c_of_a_two_process_run_stops_both_ranks_together_and_keeps_the_model(tmp_path):
    """Each rank hears the signal at another point of its step: raised where it landed, one rank met the final
    barrier while the other waited in a gradient all-reduce, and the job hung until torchrun's SIGKILL (31 s) with
    no model. Random labels never leave chance, so early stopping never ends the run before the signal."""
    import signal
    import time

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "noise.npz", x=rng.normal(size=(2000, 16)).astype(np.float32), y=rng.integers(0, 3, 2000))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen([sys.executable, "-m", "cli.main", "--progress", "lines", "train", "noise.npz",
                                 "--model", "mlp", "--epochs", "10000", "--device", "cpu", "--nproc-per-node", "2",
                                 "--out", "run"], cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        for line in launcher.stderr:
            if line.startswith("train [3/"):
                break
        launcher.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, stderr = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode == 130, stderr[-2000:]
    assert time.monotonic() - sent < 20, "the job waited for torchrun's SIGKILL"
    assert "keeping the best model so far" in stderr and "error:" not in stderr, stderr[-2000:]
    assert load_model(tmp_path / "run").spec.family == "mlp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise.npz", "run"]  # no .partial, no lock


def test_a_killed_worker_is_named_in_one_line_and_the_job_exits_1(monkeypatch, capsys):
    """Before: gloo's "Connection reset by peer ... GLHF!" from the survivor, "error: terminated" from the rank the
    launcher then stopped, and exit code 143 though nobody sent SIGTERM."""
    import signal

    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from trainers.distributed import ERROR_DIR_ENV, launch, peer_lost

    def run(_args):
        assert peer_lost(RuntimeError("[pair.cc:537] Read error [127.0.0.1]:14756: Connection reset by peer. GLHF!"))
        assert not peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
        stopped = ProcessFailure(local_rank=0, pid=1, exitcode=-signal.SIGTERM, error_file="")
        killed = ProcessFailure(local_rank=1, pid=2, exitcode=-signal.SIGKILL, error_file="")
        raise ChildFailedError("cli.main", {0: stopped, 1: killed})

    monkeypatch.setattr(torchrun, "run", run)
    assert launch(LaunchOptions(2), ["d.npz"], "cpu", announce=False) == 1
    assert capsys.readouterr().err.splitlines() == ["error: worker rank 1 died (signal 9)"]
    assert not os.environ.get(ERROR_DIR_ENV) and not peer_lost(RuntimeError("Connection reset by peer"))
