"""Training on several processes with torch.distributed: detection, sharding, reductions, launching.

The training loop in `fit.py` stays one readable loop; what changes with more
than one process lives here:

- `context()` reads the torchrun environment (WORLD_SIZE, RANK, LOCAL_RANK) and
  joins the process group (`nccl` on CUDA, `gloo` on CPU). Without that
  environment it answers a single-process context and nothing else changes.
- `epoch_indices()` shards the per-epoch seeded shuffle with
  `DistributedSampler` (`set_epoch` semantics); with one process it gives
  exactly the permutation the single-process loop always used.
- `all_sum()` adds metric sums and counts over the ranks, so every rank sees the
  same losses and takes the same early-stopping decision.
- `launch()` starts N processes per machine through torchrun's own elastic
  launcher (`torch.distributed.run`), running the plain `toolkit train`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .errors import ERROR_DIR_ENV, ToolkitError, failures_left

# Test and diagnostic hook: when set, every rank writes the SHA-256 of its final weights to
# `<dir>/rank<r>.sha256`, so a test can check that the replicas ended identical.
REPLICA_HASH_ENV = "TOOLKIT_REPLICA_HASH_DIR"
# Seconds a rank waits for the others (joining the job, then in any collective) before it fails: a dead
# peer or launcher must end the job, not leave processes waiting forever. TOOLKIT_DIST_TIMEOUT overrides it.
TIMEOUT_S = 600
TIMEOUT_ENV = "TOOLKIT_DIST_TIMEOUT"
def timeout_s() -> int:
    """The rendezvous and collective timeout in seconds (TIMEOUT_S, or TOOLKIT_DIST_TIMEOUT)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = int(float(raw)) if raw else TIMEOUT_S
    except (ValueError, OverflowError):
        value = 0
    if value < 1:
        raise ToolkitError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def exit_with_parent(interval_s: float = 1.0) -> None:
    """End this worker when the process that launched it dies (a watchdog thread polling the parent's id).

    A thread rather than prctl(PR_SET_PDEATHSIG): that signal follows the parent *thread* that forked the
    child, which in torchrun's agent need not live as long as the agent; the watchdog also works off Linux.
    `os._exit` because the main thread may be blocked inside a collective.
    """
    parent = os.getppid()
    if parent == 1:  # orphaned already, before the watchdog started
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="toolkit-parent-watchdog", daemon=True).start()


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owns_group: bool = False  # this module joined the process group, so it also leaves it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_context() -> DistContext:
    """The context described by torchrun's environment variables (one process when absent)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError as exc:
        raise ToolkitError(f"malformed torch.distributed environment: {exc}") from None
    return DistContext(rank, max(world, 1), local_rank, max(local_world, 1))


def context(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group when launched by torchrun; return the context and this rank's device.

    On CUDA each process takes the GPU numbered by its LOCAL_RANK and uses
    `nccl`; on CPU `gloo`, with the machine's cores split between the local processes.
    """
    ctx = env_context()
    if not ctx.enabled:
        return ctx, device
    import torch.distributed as dist

    exit_with_parent()

    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise ToolkitError(f"LOCAL_RANK {ctx.local_rank} but only {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world_size))
    if dist.is_initialized():  # the caller's own process group: use it, leave it to the caller
        return ctx, device
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None,
                            timeout=datetime.timedelta(seconds=timeout_s()))
    return replace(ctx, owns_group=True), device


def shutdown(ctx: DistContext, failed: bool = False) -> None:
    """Leave the process group this module joined.

    After success, a last barrier first, so no rank exits while rank 0 still writes. After a
    failure no barrier (the other ranks may never reach it): the process exits and the
    launcher stops the rest of the job.
    """
    if ctx.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            if not failed:
                dist.barrier()
            dist.destroy_process_group()


def wrap(module: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `module` (identity with one process).

    DDP broadcasts rank 0's initial weights, then averages gradients over the ranks each step.
    """
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def per_rank_batch(batch_size: int, ctx: DistContext) -> int:
    """`--batch-size` is the global batch (samples per optimizer step); each rank takes its share."""
    if batch_size < ctx.world_size:
        raise ToolkitError(f"--batch-size {batch_size} is smaller than the number of processes ({ctx.world_size})")
    return -(-batch_size // ctx.world_size)


def epoch_indices(n: int, seed: int, epoch: int, ctx: DistContext) -> torch.Tensor:
    """This rank's shuffled sample indices for `epoch`.

    `DistributedSampler` with `set_epoch`: one permutation seeded by `seed + epoch`
    shared by all ranks, padded to a multiple of the world size and dealt out
    round-robin, so every rank runs the same number of batches. With one process
    this is `torch.randperm(n)` from a generator seeded with `seed + epoch`.
    """
    if not ctx.enabled:
        # The sampler's own permutation, without its round trip through a Python list (0.2 ms an epoch at 1,221
        # rows, about 1% of an MLP epoch on one CPU thread).
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def shard(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Every world_size-th row starting at this rank (an evaluation split divided between ranks)."""
    return tensor[ctx.rank::ctx.world_size] if ctx.enabled else tensor


def all_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Sum `values` over all ranks (float64), identical on every rank afterwards."""
    if not ctx.enabled:
        return values
    import torch.distributed as dist

    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.tolist()


def resume_dir(out, resume: bool, run, ctx: DistContext) -> Path | None:
    """The directory whose checkpoint a resumed run loads, on every rank (None when not resuming).

    Rank 0 prepares the staging directory (`RunDir`); the other ranks wait for it, then
    read the same checkpoint (several machines need `out` on a shared filesystem).
    """
    if not resume or out is None:
        return None
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()
    return run.path if run is not None else Path(out).with_name(Path(out).name + ".partial")


def record_replica_hash(module: torch.nn.Module, ctx: DistContext) -> None:
    """Write this rank's weight hash when REPLICA_HASH_ENV names a directory (see above)."""
    directory = os.environ.get(REPLICA_HASH_ENV)
    if not directory:
        return
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().to("cpu").contiguous().numpy().tobytes())
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / f"rank{ctx.rank}.sha256").write_text(digest.hexdigest())


@dataclass
class LaunchOptions:
    """Where the processes run: `nproc_per_node` per machine on `nnodes` machines."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    oversubscribe: bool = False  # allow more processes than this machine's cores (CPU) or GPUs

    def validate(self, device: str = "cpu") -> None:
        """Refuse a launch that could not run; `device` is the training device (auto, cpu, cuda...)."""
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise ToolkitError("--nproc-per-node and --nnodes must be at least 1")
        gpus = torch.cuda.device_count() if device != "cpu" else 0
        if gpus and self.nproc_per_node > gpus:  # one GPU per process: never shared, whatever the flag
            raise ToolkitError(f"--nproc-per-node {self.nproc_per_node} but this machine has {gpus} GPU(s)")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if not gpus and self.nproc_per_node > cores and not self.oversubscribe:
            # Each process holds a copy of the data and the model: more processes than cores only adds memory.
            raise ToolkitError(f"--nproc-per-node {self.nproc_per_node} but this machine has {cores} core(s) "
                               "available; pass --oversubscribe to start more processes than cores")
        if not 0 <= self.node_rank < self.nnodes:
            raise ToolkitError(f"--node-rank must be between 0 and {self.nnodes - 1}, got {self.node_rank}")
        if self.nnodes > 1 and not self.master_addr:
            raise ToolkitError("--nnodes > 1 needs --master-addr (the address of the node with --node-rank 0)")
        if self.master_port is not None and not 0 <= self.master_port < 65536:
            raise ToolkitError(f"--master-port must be a port number, got {self.master_port}")

    def torchrun_args(self) -> list[str]:
        """torchrun options for this launch (what `toolkit train --nproc-per-node` runs)."""
        wait = timeout_s()  # dynamic rendezvous (one machine) reads join_timeout, static (several) timeout
        args = [f"--nproc-per-node={self.nproc_per_node}", f"--rdzv-conf=join_timeout={wait},timeout={wait}"]
        if self.nnodes == 1 and self.master_addr is None and not self.master_port:
            # One machine: c10d rendezvous on a free port picked by the OS (no fixed port).
            return ["--standalone", *args]
        args += [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}",
                 f"--master-addr={self.master_addr or '127.0.0.1'}", f"--master-port={self.master_port or 29500}"]
        return args


def refuse_unlaunched(given: LaunchOptions) -> None:
    """Without --nproc-per-node nothing is launched: the options of a launch would be accepted and do nothing,
    so any one given is refused (`nproc_per_node` is not read)."""
    if (given.nnodes != 1 or given.node_rank or given.master_addr or given.master_port is not None
            or given.oversubscribe):
        raise ToolkitError("--nnodes, --node-rank, --master-addr, --master-port and --oversubscribe need "
                           "--nproc-per-node")


def launch(options: LaunchOptions, train_argv: list[str], device: str = "auto", announce: bool = True,
           global_args: tuple[str, ...] = ()) -> int:
    """Run `toolkit <global_args> train <train_argv>` in `nproc_per_node` processes through torchrun's launcher;
    `announce` prints the torchrun command line on stderr first.

    Returns the exit code: 0 when every worker succeeded, 128 + the signal when the launcher was stopped by one
    (130 for Ctrl-C, as a one-process run), 1 when a worker was killed (named on stderr), else the first failed
    worker's code. A worker's failure line (and with `--json` its object)
    reaches stderr once: rank 0's, or else the first other rank's, with its code (`speaks`); torchrun's own log
    lines do not.
    """
    options.validate(device)
    import logging
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = [*options.torchrun_args(), "--module", "cli.main", *global_args, "train", *train_argv]
    if announce:
        print("launching: torchrun " + " ".join(argv), file=sys.stderr)
    if "OMP_NUM_THREADS" not in os.environ:
        # Split the cores between the local processes (torchrun alone would give each one thread).
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // options.nproc_per_node))
    # torchrun logs each failed worker at ERROR ("failed (exitcode: 2) local_rank: 1 ...") and a Ctrl-C at
    # WARNING, several of its loggers at their own level: the worker's own line says why, the exit code that
    # it failed.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith(("torch.distributed.elastic",
                                                                          "torch.distributed.launcher",
                                                                          "torch.distributed.run"))]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="toolkit-errors-") as folder:
        os.environ[ERROR_DIR_ENV] = folder
        try:
            run(parse_args(argv))
        except SignalException as exc:  # Ctrl-C or a kill of the launcher: the workers were stopped with it
            _wait_for_workers()
            _say_for_rank_0(Path(folder), "--json" in train_argv)  # rank 0 may have left quietly (`peer_lost`)
            return 128 + int(exc.sigval)
        except ChildFailedError as exc:
            # A worker killed by a signal other than the SIGTERM with which the launcher stops the rest; they failed
            # with it, quietly (`peer_lost`): one line, and exit code 1, not the code of a signal nobody sent.
            died = [(rank, -failure.exitcode) for rank, failure in sorted(exc.failures.items())
                    if failure.exitcode < 0 and -failure.exitcode != signal.SIGTERM]
            if died:
                print(f"error: worker rank {died[0][0]} died (signal {died[0][1]})", file=sys.stderr)
                return 1
            codes = [failure.exitcode for _, failure in sorted(exc.failures.items())]
            said = _say_for_rank_0(Path(folder), "--json" in train_argv)
            return said if said is not None else next((code for code in codes if code and code > 0), 1)
        finally:
            os.environ.pop(ERROR_DIR_ENV, None)
    return 0


def _say_for_rank_0(folder: Path, as_json: bool) -> int | None:
    """Where rank 0 left no failure line (`speaks`) and another rank did: that line, with its rank, on stderr (its
    JSON object on stdout with `as_json`), and its exit code; else None."""
    said = failures_left(folder)
    if not said or 0 in said:
        return None
    rank = min(said)
    print(f"error: {said[rank]['error']} (rank {rank})", file=sys.stderr)
    if as_json:
        print(json.dumps(said[rank]))
    return said[rank]["exit_code"]


def _wait_for_workers(timeout_s: float = 30.0) -> None:
    """Wait until the launcher's child processes (the workers) have exited, at most `timeout_s` (torchrun's own
    shutdown wait) or until another signal. A second signal (Ctrl-C twice, or `timeout` passing on the one its
    group got) cut torchrun's wait short: the launcher exited, the prompt came back, and only then did rank 0 say
    the job's one line (its --json object after the caller had read stdout)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:  # workers left, none exited since
                time.sleep(0.05)
    except ChildProcessError:  # none left
        pass
    except (KeyboardInterrupt, SignalException):  # another signal: stop waiting, as a second Ctrl-C stops a run
        pass


# gloo's words when the process at the other end of a collective died
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer")


def peer_lost(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another worker of a `launch` died: the launcher names that
    worker, so this one ends with no line of its own (before: gloo's message, and "terminated" from a rank that
    the launcher stopped)."""
    return bool(os.environ.get(ERROR_DIR_ENV)) and isinstance(exc, RuntimeError) and any(
        words in str(exc) for words in _PEER_GONE)


# TrainConfig fields that `toolkit train` takes as options, with their flags: what the launched processes receive.
_TRAIN_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "device": "--device", "seed": "--seed",
                "select": "--select"}


def launch_training(data, family: str, config, options: LaunchOptions, *, out: Path, target: str | None = None,
                    overwrite: bool = False, resume: bool = False, json_output: bool = False,
                    extra_args: tuple[str, ...] = (), table=None, image_size: int | None = None,
                    announce: bool = True, global_args: tuple[str, ...] = ()) -> int:
    """`train(data, family, config, out=...)` in `options.nproc_per_node` processes per machine, via `launch`.

    What would make every process fail (a bad option, too few GPUs, an occupied `out`) is refused here first,
    in one ToolkitError line. `table` (`tables.TableOptions`: target, kept and dropped columns, separator) and
    `image_size` reach every process as the same options; `target` overrides the table's target. `extra_args`
    go to every process's `toolkit train` as they are (tracking options), `global_args` to its `toolkit`
    (`--progress`, `--quiet`). Returns the launcher's exit code.
    """
    from .models import get_family

    config.validate()
    options.validate(config.device)
    get_family(family)
    unsent = [name for name, value in vars(config).items()
              if name not in (*_TRAIN_FLAGS, "model", "amp", "refit") and value != getattr(type(config)(), name)]
    if unsent:
        raise ToolkitError(f"{', '.join(unsent)} cannot be passed to the launched processes: keep the defaults")
    if config.device != "auto":
        from .artifact import check_device

        check_device(config.device)
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (overwrite or resume):
        raise ToolkitError(f"output directory {out} already exists; pass --overwrite to replace it")
    argv = [str(data), "--model", family, "--out", str(out)]
    for name, flag in _TRAIN_FLAGS.items():
        if getattr(config, name) is not None:  # unset (epochs): each process fills it in for the data
            argv += [flag, repr(getattr(config, name)) if name == "lr" else str(getattr(config, name))]
    if config.refit is not None:
        argv.append("--refit" if config.refit else "--no-refit")
    if config.model:
        argv += ["--arch", json.dumps(config.model)]
    argv += _table_args(table, target)
    if image_size is not None:
        from .images import image_size as checked_size

        argv += ["--image-size", str(checked_size(image_size))]
    argv += [flag for flag, on in (("--amp", config.amp), ("--overwrite", overwrite), ("--resume", resume),
                                   ("--json", json_output)) if on]
    return launch(options, [*argv, *extra_args], config.device, announce, global_args)


def _table_args(table, target: str | None) -> list[str]:
    """The `toolkit train` options that read a table as `table` (a `tables.TableOptions` or None) says."""
    args = []
    target = target if target is not None else getattr(table, "target", None)
    if target is not None:
        args.append(f"--target={target}")  # FLAG=VALUE: a column name may start with '-'
    for flag, names in (("--keep", getattr(table, "keep", ())), ("--drop", getattr(table, "drop", ()))):
        args += [f"{flag}={name}" for name in names]
    if getattr(table, "sep", None) is not None:
        args.append(f"--sep={table.sep}")
    return args
