"""The report's figures as PNG bytes (inlined by the renderer), drawn by `trainers.figures`.

Each function takes plain data from result.json and returns None when there is nothing to draw.
"""

from __future__ import annotations

from trainers import figures as _draw


def learning_curves(history: list[dict]) -> bytes | None:
    return _draw.to_png(_draw.learning_curves(history))


def confusion_matrix(matrix: list[list], class_names: list[str]) -> bytes | None:
    return _draw.to_png(_draw.confusion_matrix(matrix, class_names))


def pareto(points: list[dict], chosen: str | None = None) -> bytes | None:
    return _draw.to_png(_draw.pareto(points, chosen))


def size_bars(rows: list[dict]) -> bytes | None:
    return _draw.to_png(_draw.size_bars(rows))


def importance_bars(items: list[tuple[str, float]], title: str = "global importance") -> bytes | None:
    return _draw.to_png(_draw.importance_bars(items, title))
