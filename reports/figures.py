"""Figures drawn from the numbers in result.json, returned as PNG bytes (inlined by the renderer).

Each function takes plain data and returns None when there is nothing to draw,
so a section without its numbers simply has no figure. Text from user data
(class or feature names) is drawn as plain text: mathtext is off, so a name
with `$` cannot break or change the drawing.
"""

from __future__ import annotations

import io

from .collect import number

PALETTE = ("#1f5fa8", "#d9822b", "#2a9d4b", "#b23a48", "#7a4eab", "#5b6770", "#c2a000", "#0f8b8d")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"text.parse_math": False, "text.usetex": False, "font.size": 9, "axes.titlesize": 10,
                         "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100,
                         "savefig.dpi": 110, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _short(text, limit: int = 18) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def learning_curves(history: list[dict]) -> bytes | None:
    """Loss and accuracy per epoch, training and validation."""
    rows = [r for r in history or [] if isinstance(r, dict) and number(r.get("epoch")) is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.0))
    epochs = [r["epoch"] for r in rows]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split, color in (("train", PALETTE[0]), ("val", PALETTE[1])):
            values = [number(r.get(f"{split}_{metric}")) for r in rows]
            if any(v is not None for v in values):
                ax.plot(epochs, [float("nan") if v is None else v for v in values], marker="o", markersize=2.5,
                        color=color, label="validation" if split == "val" else "training")
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.legend(frameon=False)
    fig.tight_layout()
    return _png(fig)


def confusion_matrix(matrix: list[list], class_names: list[str]) -> bytes | None:
    """Test-set confusion matrix with counts (true class in rows)."""
    if not matrix or not all(isinstance(row, list) and len(row) == len(matrix) for row in matrix):
        return None
    n = len(matrix)
    values = [[number(v) or 0.0 for v in row] for row in matrix]
    names = [_short(c, 12) for c in (class_names if class_names and len(class_names) == n else range(n))]
    plt = _pyplot()
    side = min(2.0 + 0.3 * n, 7.0)
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    image = ax.imshow(values, cmap="Blues")
    ax.grid(False)
    ax.set_xticks(range(n), names, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 25:
        peak = max(max(row) for row in values) or 1.0
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=7 if n > 12 else 8,
                            color="white" if v > 0.55 * peak else "#222")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _png(fig)


def pareto(points: list[dict], chosen: str | None = None) -> bytes | None:
    """Latency (x) against accuracy (y); marker area grows with file size; the Pareto front joined."""
    pts = [p for p in points if number(p.get("latency")) is not None and number(p.get("accuracy")) is not None]
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 3.8))
    sizes = [number(p.get("size")) or 0.0 for p in pts]
    biggest = max(sizes) or 1.0
    for i, p in enumerate(pts):
        area = 40 + 560 * (sizes[i] / biggest)
        is_chosen = p.get("name") == chosen
        ax.scatter(p["latency"], p["accuracy"], s=area, alpha=0.55, color=PALETTE[i % len(PALETTE)],
                   edgecolors="black" if is_chosen else "none", linewidths=2 if is_chosen else 0)
        ax.annotate(_short(p.get("name", "?"), 24) + (" (chosen)" if is_chosen else ""), (p["latency"], p["accuracy"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    front, best = [], -1.0
    for p in sorted(pts, key=lambda q: (q["latency"], -q["accuracy"])):
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    if len(front) > 1:
        ax.plot([p["latency"] for p in front], [p["accuracy"] for p in front], "--", color="#888", lw=1,
                label="Pareto front")
        ax.legend(frameon=False, loc="lower right")
    ax.set_xlabel("latency p50 at batch 1 (ms)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy against latency (marker area = file size)")
    ax.margins(0.15)
    fig.tight_layout()
    return _png(fig)


def sensitivity(curves: dict[str, list[tuple[float, float]]], ylabel: str = "accuracy") -> bytes | None:
    """Per-layer pruning sensitivity: one line per layer, pruning amount (x) against accuracy or drop (y)."""
    curves = {k: v for k, v in (curves or {}).items() if v}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 3.4))
    for i, (layer, points) in enumerate(curves.items()):
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                color=PALETTE[i % len(PALETTE)], label=_short(layer, 28))
    ax.set_xlabel("fraction pruned in this layer alone")
    ax.set_ylabel(ylabel)
    ax.set_title("per-layer pruning sensitivity")
    ax.legend(frameon=False, fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def size_bars(rows: list[dict]) -> bytes | None:
    """Nominal size (parameters x bits) against bytes on disk, per variant."""
    rows = [r for r in rows if number(r.get("nominal")) is not None or number(r.get("disk")) is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 0.9 + 0.42 * len(rows)))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [(number(r.get("nominal")) or 0) / 1024 for r in rows], height=0.4,
            color=PALETTE[0], label="nominal (parameters x bit width)")
    ax.barh([y - 0.2 for y in ys], [(number(r.get("disk")) or 0) / 1024 for r in rows], height=0.4,
            color=PALETTE[1], label="on disk")
    ax.set_yticks(list(ys), [_short(r.get("name", "?"), 26) for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("KiB")
    ax.set_title("nominal against on-disk size")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def importance_bars(items: list[tuple[str, float]], title: str = "global importance") -> bytes | None:
    """Horizontal bars of the most important features (when the stage gave numbers but no figure)."""
    items = [(str(n), v) for n, v in items if number(v) is not None][:20]
    if not items:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 0.8 + 0.3 * len(items)))
    ax.barh(range(len(items)), [v for _, v in items], color=PALETTE[0])
    ax.set_yticks(range(len(items)), [_short(n, 30) for n, _ in items])
    ax.invert_yaxis()
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)
