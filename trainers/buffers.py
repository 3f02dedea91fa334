"""Float32 matrices whose memory can be handed back to the system part by part.

A large table is read into one column-major matrix and encoded into another; holding both at once is two
copies of the data. `column_matrix` allocates a matrix on its own anonymous memory map, so `release` can
return the pages of a column (or of its first rows) to the system as soon as they have been consumed, while
the rest of the matrix stays valid. Memory from anywhere else (NumPy's allocator, pyarrow, a user's array)
is never released: `release` does nothing for it. Where memory maps or `madvise` are missing, the matrices
are ordinary arrays and `release` does nothing.
"""

from __future__ import annotations

import functools
import mmap
import os
import sys

import numpy as np

_RELEASABLE = os.name == "posix" and hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap, "MAP_PRIVATE")


class _Pages(mmap.mmap):
    """Private anonymous memory allocated here; `address` is where it starts."""


def column_matrix(rows: int, cols: int) -> np.ndarray:
    """An uninitialised (rows, cols) float32 matrix in column-major order; pages are committed when written."""
    if not _RELEASABLE or rows * cols == 0:
        return np.empty((rows, cols), dtype=np.float32, order="F")
    pages = _Pages(-1, rows * cols * 4, flags=mmap.MAP_PRIVATE)
    pages.address = np.frombuffer(pages, dtype=np.uint8, count=1).ctypes.data
    return np.ndarray((rows, cols), dtype=np.float32, buffer=pages, order="F")


def release(values: np.ndarray) -> None:
    """Return the pages that lie wholly inside `values` (a contiguous view of a `column_matrix`) to the system.

    Their contents read as zeros afterwards: call it only on values nothing will read again. Pages shared
    with values just outside stay. Does nothing for memory not allocated by `column_matrix`.
    """
    owner = values
    while isinstance(owner, np.ndarray):
        owner = owner.base
    if not isinstance(owner, _Pages) or owner.closed or not values.size:
        return
    if not (values.flags.c_contiguous or values.flags.f_contiguous):
        return
    start = values.ctypes.data - owner.address
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (start + values.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if 0 <= first < end <= len(owner):
        owner.madvise(mmap.MADV_DONTNEED, first, end - first)


def hand_back_freed() -> None:
    """Hand freed memory back to the system: glibc keeps freed blocks below its (rising) memory-map threshold
    and arrow's pool its own, which later large allocations do not reuse (measured: 35 MiB after reading a
    2.4M x 10 CSV; 85 MiB after encoding the labels of a 1M x 50 CSV and splitting it)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    pa = sys.modules.get("pyarrow")  # never imported: its pool holds nothing
    if pa is not None:
        pa.default_memory_pool().release_unused()


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None (another C library); looked up once (`find_library` runs a subprocess)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
