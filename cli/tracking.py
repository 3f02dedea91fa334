"""The tracking options every stage command shares: `--mlflow URI` and `--tensorboard DIR`."""

from __future__ import annotations

import typer

TRACKING = "Experiment tracking"
MLFLOW = typer.Option(None, "--mlflow", metavar="URI", rich_help_panel=TRACKING,
                      help="Log to MLflow at this tracking URI (default: $MLFLOW_TRACKING_URI when set).")
TENSORBOARD = typer.Option(None, "--tensorboard", metavar="DIR", rich_help_panel=TRACKING,
                           help="Write TensorBoard scalars under this directory.")


def tracker(stage: str, mlflow: str | None, tensorboard: str | None):
    """The tracker `--mlflow`/`--tensorboard` ask for (a no-op without them or MLFLOW_TRACKING_URI); a context manager."""
    from trainers.options import parse
    from trainers.tracking import TrackingOptions, open_tracker

    given = {"mlflow": mlflow, "tensorboard": tensorboard}
    return open_tracker(parse(TrackingOptions, {k: v for k, v in given.items() if v is not None}, "tracking"), stage)


def tracking_args(mlflow: str | None, tensorboard: str | None) -> tuple[str, ...]:
    """The same options, for a command that starts `toolkit` again (torchrun's processes)."""
    return tuple(arg for flag, value in (("--mlflow", mlflow), ("--tensorboard", tensorboard)) if value
                 for arg in (flag, value))
