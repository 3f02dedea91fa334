"""How long `compress --method auto` takes on an idle machine and with k CPU-bound processes beside it.

    python benchmarks/auto_under_load.py [--families mlp cnn lstm] [--loads 0 1 2] [--quick] [--out DIR]

Data: 4,000 synthetic 1-D samples of 40 values (4 classes of noisy waveforms, shape (1, 40)), which every
family reads (the MLP flattens them). Each family is trained once (outside the timings); then, for each
load k, k background processes spin on pure-Python arithmetic (one core each) while `compress_model(...,
methods=["auto"])` runs in this process, timed wall-clock as one whole call. Loads alternate within each
round (k = 0, 1, 2, then again), medians are reported with the ratio loaded / idle and the target (k+1).
The choice (the chosen variant's name, speed-up and agreement with the original) is printed for each run,
so a faster auto that chose worse is visible.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_waves(path: Path, n: int = 4000, length: int = 40, seed: int = 0) -> Path:
    """n noisy 1-D waveforms (1, length) in 4 classes (sine, square, sawtooth, chirp), random phase and frequency."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length, dtype=np.float32)
    x = np.empty((n, 1, length), np.float32)
    y = rng.integers(0, 4, n)
    for i, c in enumerate(y):
        f, p = rng.uniform(1.5, 4), rng.uniform(0, 2 * np.pi)
        base = [np.sin(2 * np.pi * f * t + p), np.sign(np.sin(2 * np.pi * f * t + p)),
                2 * ((f * t + p / (2 * np.pi)) % 1) - 1, np.sin(2 * np.pi * (f + 3 * t) * t + p)][c]
        x[i, 0] = base * rng.uniform(0.5, 2) + rng.normal(0, 0.8, length)
    np.savez(path, x=x, y=y, class_names=np.array(["sine", "square", "sawtooth", "chirp"]))
    return path
