"""Ctrl-C and SIGTERM during training: held until every process can stop at the same step, and the save finishes.

Under torchrun each process gets the signal on its own (a terminal's Ctrl-C reaches them all, the launcher passes
its own signal on), each at another point of its step. Raised where it landed, it took one rank out of the loop
to the final barrier while the other waited inside a gradient all-reduce: the job hung until torchrun's SIGKILL
31 s later and left no model (2 CPU processes, a 512x512 MLP on 20,000 rows, 0.5 s into the first epoch). And a
signal during the final evaluation or the save, in one process too, left the run without its model.

So `held_interrupts` wraps the handlers in place (the CLI's, or Python's Ctrl-C): the KeyboardInterrupt they raise
is held, the training loop asks `Interrupts.at_step()` before each step and every rank leaves at the same step; the
evaluation and the save then run to the end. In one process a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import torch

from . import distributed

# A job's ranks compare their flags about this often (`Interrupts.pace`): an all-reduce of the flag before every
# step added 0.65 ms to a 2.3 ms step (a 64-unit MLP, 2 processes on 2 busy cores, the best of 6 rounds of 1,000
# steps), 28%; every 0.1 s it is under 1%, and a stop still comes within a step or 0.1 s.
CHECK_S = 0.1


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or the CLI's SIGTERM) stopped `train`: the best model so far is whole, in `.result`.

    A KeyboardInterrupt, so a notebook cell or a script stops as it does for any Ctrl-C, instead of going on to
    its next line (a compression of a half-trained model); `except TrainingInterrupted as stop: stop.result`
    keeps the model, which `out` holds too where given (`--resume` continues it).

    Before the first epoch ended there is no best model: `.result` is None and nothing was saved (`out` stays as
    it was). Its random initial weights, once kept, read as a finished run that predicted at chance, and left no
    checkpoint for `--resume`. The message then starts with "before", to follow "interrupted" in the CLI's line.
    """

    def __init__(self, result=None):
        if result is None:
            super().__init__("before the first epoch ended: there is no model to keep, nothing was saved")
        else:
            where = f"; saved in {result.out} (train(..., resume=True) continues it)" if result.out else ""
            super().__init__(f"training interrupted after {result.epochs_run} epochs: the best model so far (epoch "
                             f"{result.best_epoch}) is this exception's .result{where}")
        self.result = result


class Interrupts:
    """What the held signals asked: `heard` by this process, `requested` by any rank (the same on every rank)."""

    def __init__(self, ctx: distributed.DistContext = distributed.DistContext()):
        self.ctx = ctx
        self.heard = False
        self.agreed = False
        self.group = None  # the ranks' CPU group for the flag (`held_interrupts`)
        self.every, self.steps = 1, 0  # a job compares flags every `every` steps (`pace`)

    def requested(self) -> bool:
        """Whether a signal reached any rank: a collective in a job, so every rank calls it at the same point."""
        if not self.ctx.enabled:
            return self.heard
        if not self.agreed:
            self.agreed = _any_rank(self.heard, self.group)
        return self.agreed

    def at_step(self) -> bool:
        """`requested()` before a training step: in a job only every `every` steps, else the last answer."""
        self.steps += 1
        if self.ctx.enabled and self.steps % self.every:
            return self.agreed
        return self.requested()

    def pace(self, step_s: float) -> None:
        """Compare flags about every CHECK_S seconds, given the ranks' mean step time (the same on every rank)."""
        self.every = max(1, int(CHECK_S / max(step_s, 1e-9)))


def _any_rank(flag: bool, group) -> bool:
    import torch.distributed as dist

    total = torch.tensor([float(flag)])
    dist.all_reduce(total, group=group)
    return bool(total.item())


@contextlib.contextmanager
def held_interrupts(ctx: distributed.DistContext = distributed.DistContext()):
    """Hold the KeyboardInterrupt that SIGINT's and SIGTERM's Python handlers raise in the block (`Interrupts`).

    The handler in place still runs (the CLI's records which signal it was, for the exit code); a signal left to
    the system (SIGTERM outside the CLI) is left alone. The flag travels over gloo, on the CPU: under NCCL a
    CUDA flag would make every step wait for the GPU.
    """
    interrupts = Interrupts(ctx)
    if ctx.enabled:
        import torch.distributed as dist

        interrupts.group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return

    def hold(previous):
        def handler(number, frame):
            try:
                previous(number, frame)
            except KeyboardInterrupt:
                if interrupts.heard and not ctx.enabled:
                    raise  # the second Ctrl-C of one process: at once (a job's ranks hear each signal twice)
                interrupts.heard = True
        return handler

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous = {sig: handler for sig, handler in previous.items() if callable(handler)}
    for sig, handler in previous.items():
        signal.signal(sig, hold(handler))
    try:
        yield interrupts
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
