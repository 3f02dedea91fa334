"""The value range of a model's training inputs, recorded in `model.json` and checked where rows are predicted.

A model given rows at another scale than it was trained on predicts confident, wrong classes with no error: the
built-in digits (values 0..16) saved as PNGs and read from a folder (pixels scaled to [0, 1]) were all a "3",
and a model trained from an image folder given the same images as a uint8 `.npz` (0..255) called them all
"light". So training records `preprocessing.input_range` (`record`), and `trainers.predict` and `toolkit predict`
warn once per call where the rows cannot be at the training scale (`mismatch`). An artifact without the record
(older ones, models trained on a table, whose raw rows the recorded preprocessing encodes) is not checked.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

SAMPLE_VALUES = 1 << 20   # values looked at, from rows spread over the array (a .npy is read only at those rows)
_CHECKED = contextvars.ContextVar("input_range_checked", default=False)


def record(x_train, images: bool) -> dict:
    """`preprocessing.input_range` of a model trained on `x_train`: the min and max of its values (of up to
    `SAMPLE_VALUES` values, rows spread over the split), and whether they came from an image folder (`images`,
    pixels scaled to [0, 1])."""
    values = _sample(x_train)
    if values.size == 0:
        return {"min": None, "max": None, "images": images}
    return {"min": float(values.min()), "max": float(values.max()), "images": images}


def mismatch(recorded: dict | None, x, images: bool = False) -> str | None:
    """Why the rows `x` cannot be at the scale the model was trained on (`recorded`, see `record`), or None.

    Two cases: images read from a folder (`images`, pixels in [0, 1]) for a model not trained on a [0, 1] scale;
    or the bulk of the rows' values (1st to 99th percentile) lying more than the training range's own width
    beyond it (0..255 pixels where the model saw [0, 1]). Rows merely unusual for the training data are not named.
    """
    try:
        low, high = float(recorded["min"]), float(recorded["max"])
    except (TypeError, ValueError, KeyError):  # no record, or none that can be read: nothing to check against
        return None
    if len(x) == 0:
        return None
    trained = f"[{low:.4g}, {high:.4g}]" + (" (an image folder, pixels scaled to [0, 1])" if recorded.get("images")
                                             else "")
    if images and not recorded.get("images") and not (abs(low) <= 0.5 and abs(high - 1.0) <= 0.5):
        return (f"images are read with pixels scaled to [0, 1], but this model was trained on inputs in {trained}, "
                "not from an image folder: its predictions on them mean nothing; give the rows at the training "
                "scale (an .npz array x)")
    values = _sample(x)
    if values.size == 0:
        return None
    k = int(0.01 * (values.size - 1))
    ordered = np.partition(values, [k, values.size - 1 - k])   # 1st and 99th percentiles, without a full sort
    first, last = float(ordered[k]), float(ordered[values.size - 1 - k])
    width = max(high - low, 1e-6)
    if last > high + width or first < low - width:
        return (f"the rows' values lie in [{first:.4g}, {last:.4g}] (1st to 99th percentile), far outside the range "
                f"of the training inputs, {trained}: they are at another scale than the model was trained on"
                f"{_scale_hint(low, high, first, last)}, so its predictions mean little; rescale them as at training")
    return None


def _scale_hint(low: float, high: float, first: float, last: float) -> str:
    """A guess at the cause that fits these ranges (training's `low..high`, the rows' `first..last`): 0..255
    pixels only where training saw [0, 1] (a digits model, 0..16, given 0..256 is 16 times its scale, no pixel
    question), else the factor between the two scales where one is plain, else nothing."""
    if -0.01 <= low and high <= 1.01 and first >= -0.5 and 1.5 < last <= 255.5:
        return " (pixels 0..255 where it saw [0, 1]?)"
    trained, given = max(abs(low), abs(high)), max(abs(first), abs(last))
    if trained <= 0 or given <= 0:
        return ""
    factor = given / trained
    if factor >= 2:
        return f" (values about {factor:.3g} times as large as training's: another unit or scaling?)"
    if factor <= 0.5:
        return f" (values about 1/{1 / factor:.3g} of training's: another unit or scaling?)"
    return ""


def check(model, x, images: bool = False) -> None:
    """Warn (`errors.warn`) where `mismatch` finds the rows `x` off the scale `model` was trained on; not inside
    `checked_once`, whose caller checked the whole file already."""
    from .artifact import LoadedModel
    from .errors import warn

    if _CHECKED.get() or not isinstance(model, LoadedModel):
        return
    message = mismatch(model.spec.preprocessing.get("input_range"), x, images)
    if message:
        warn(message)


@contextlib.contextmanager
def checked_once(model, x, images: bool = False):
    """Check the rows of a whole file once (`check`), then predict them batch by batch inside without checking
    each batch again: one warning per call, not one per batch."""
    check(model, x, images)
    token = _CHECKED.set(True)
    try:
        yield
    finally:
        _CHECKED.reset(token)


def _sample(x) -> np.ndarray:
    """Up to `SAMPLE_VALUES` finite values of `x` as float64, from rows spread evenly over it."""
    if not hasattr(x, "shape") or len(x) == 0:
        return np.zeros(0)
    per_row = max(1, int(np.prod(x.shape[1:])))
    rows = min(len(x), max(1, SAMPLE_VALUES // per_row))
    picked = x if rows == len(x) else x[np.unique(np.linspace(0, len(x) - 1, rows).astype(np.int64))]
    values = np.asarray(picked, dtype=np.float64).ravel()
    return values[np.isfinite(values)]
