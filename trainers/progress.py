"""One progress interface for every stage: a callback that receives `ProgressEvent`s.

`train`, `compress_model` and `explain_model` take `progress=`: None or False (quiet), True (`ConsoleProgress`),
or any callable taking an event (stage, step, total, message). `str(event)` is a plain line, so `progress=print`
works. `ConsoleProgress` renders the events on stderr: rich progress bars with an ETA on a terminal, plain lines
when piped.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Protocol


@dataclass(frozen=True)
class ProgressEvent:
    """Step `step` of `total` (None when unknown) of a stage (train, compress, measure, explain)."""

    stage: str
    step: int
    total: int | None
    message: str = ""

    def __str__(self) -> str:
        count = f"{self.step}/{self.total}" if self.total else str(self.step)
        return f"{self.stage} [{count}] {self.message}".rstrip()


class ProgressCallback(Protocol):
    def __call__(self, event: ProgressEvent) -> object: ...


def reporter(progress: ProgressCallback | Callable | None, stage: str, total: int | None) -> Callable[..., None]:
    """`report(step, message)` sending events of `stage` to `progress` (does nothing when progress is None)."""

    def report(step: int, message: str = "") -> None:
        if progress is not None:
            progress(ProgressEvent(stage, step, total, message))

    return report


@contextmanager
def progress_target(progress):
    """The callback a stage's `progress=` names, as `train` reads it: True renders the events on stderr (a
    `ConsoleProgress`, its bars stopped when the stage returns), None or False nothing, a callable gets them."""
    if progress is True:
        with ConsoleProgress() as console:
            yield console
    else:
        yield None if progress is False else progress


class ConsoleProgress:
    """Render events on stderr: one rich bar per stage (with ETA) on a terminal, else one plain line per event.

    Use as a context manager (the bars stop on exit). `quiet=True` renders nothing; `live` overrides the
    terminal check.
    """

    def __init__(self, quiet: bool = False, live: bool | None = None, stream=None):
        self.quiet, self.stream = quiet, stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._bars, self._tasks = None, {}

    def __enter__(self) -> "ConsoleProgress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self._bars is not None:
            self._bars.live.transient = True  # a failure: erase the bars, its error line stands alone
        self.close()

    def close(self) -> None:
        """Stop the bars (leaving them on screen)."""
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    def __call__(self, event: ProgressEvent) -> None:
        if self.quiet:
            return
        if not isinstance(event, ProgressEvent) and self._bars is not None:
            self._bars.console.print(str(event), markup=False, highlight=False)
            return
        if not self.live or not isinstance(event, ProgressEvent):
            print(str(event), file=self.stream, flush=True)
            return
        bars = self._start()
        if event.stage not in self._tasks:
            self._tasks[event.stage] = bars.add_task(event.stage, total=event.total)
        bars.update(self._tasks[event.stage], completed=event.step, total=event.total,
                    description=f"{event.stage} {event.message}".strip())

    def _start(self):
        if self._bars is None:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                  console=Console(file=self.stream, force_terminal=True))
            self._bars.start()
        return self._bars
