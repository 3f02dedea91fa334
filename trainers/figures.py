"""Figures drawn from the numbers of a stage's result, as `matplotlib.figure.Figure` objects.

Each function takes plain data and returns None when there is nothing to draw, so a
section without its numbers simply has no figure. Nothing here touches matplotlib's
global state (no backend switch, no pyplot, rcParams only inside `rc_context`), so a
notebook keeps its own settings. Text from user data (class or feature names) is drawn
as plain text: mathtext is off, so a name with `$` cannot break or change the drawing.
"""

from __future__ import annotations

import functools
import io
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: matplotlib is imported when a figure is drawn
    from matplotlib.figure import Figure

PALETTE = ("#1f5fa8", "#d9822b", "#2a9d4b", "#b23a48", "#7a4eab", "#5b6770", "#c2a000", "#0f8b8d")


STYLE = {"text.parse_math": False, "text.usetex": False, "font.size": 9, "axes.titlesize": 10,
         "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100, "savefig.dpi": 110,
         "axes.grid": True, "grid.alpha": 0.3}


def number(value) -> float | None:
    """A finite float, or None for anything else (missing values, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def styled(draw):
    """Run a drawing function inside `rc_context(STYLE)`: the house style without changing the caller's rcParams."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def new_figure(figsize):
    """A figure that belongs to no pyplot state machine (nothing to close, no backend chosen)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def to_png(fig) -> bytes | None:
    """PNG bytes of a figure (None stays None), in the house style."""
    if fig is None:
        return None
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _colors(n: int) -> list:
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def _short(text, limit: int = 18) -> str:
    """`text` on one line (a newline in a user's name would overlap the next label) and at most `limit`
    characters, cut in the middle: variant names share their start (`prune-structured-20-uniform+...`) and
    differ at the end, so a cut end would make two of them read the same."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    tail = (limit - 1) // 2
    return text[: limit - 1 - tail] + "…" + text[len(text) - tail:]


def short_names(names, limit: int = 18) -> list[str]:
    """`_short` of each name, widened where two different names would still read the same (up to the whole
    name), so a legend or an axis never shows two entries under one label."""
    names = [str(n) for n in names]
    out = [_short(n, limit) for n in names]
    width = limit
    while width < max(map(len, names), default=0):
        clash = {s for s in out if len({n for n, o in zip(names, out) if o == s}) > 1}
        if not clash:
            break
        width += 8
        out = [_short(n, width) if o in clash else o for n, o in zip(names, out)]
    return out


# Above this many classes the confusion matrix labels every k-th one only: 100 labels overlap into a band.
MAX_TICK_LABELS = 30


def _ticks(names: list[str]) -> tuple[list[int], list[str]]:
    """Tick positions and labels, thinned to at most `MAX_TICK_LABELS`."""
    step = math.ceil(len(names) / MAX_TICK_LABELS) or 1
    positions = list(range(0, len(names), step))
    return positions, [names[i] for i in positions]


@styled
def learning_curves(history: list[dict]) -> "Figure | None":
    """Loss and accuracy per epoch, training and validation."""
    rows = [r for r in history or [] if isinstance(r, dict) and number(r.get("epoch")) is not None]
    if not rows:
        return None
    from matplotlib.ticker import MaxNLocator

    fig = new_figure((8.4, 3.0))
    axes = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split, color in (("train", PALETTE[0]), ("val", PALETTE[1])):
            values = [number(r.get(f"{split}_{metric}")) for r in rows]
            if any(v is not None for v in values):
                ax.plot(epochs, [float("nan") if v is None else v for v in values], marker="o", markersize=2.5,
                        color=color, label="validation" if split == "val" else "training")
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(frameon=False)
    fig.tight_layout()
    return fig


@styled
def confusion_matrix(matrix: list[list], class_names: list[str]) -> "Figure | None":
    """Test-set confusion matrix with counts (true class in rows)."""
    if not matrix or not all(isinstance(row, list) and len(row) == len(matrix) for row in matrix):
        return None
    n = len(matrix)
    values = [[number(v) or 0.0 for v in row] for row in matrix]
    names = short_names(class_names if class_names and len(class_names) == n else range(n), 12)
    side = min(2.0 + 0.3 * n, 7.0)
    fig = new_figure((side + 0.8, side))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues")
    ax.grid(False)
    positions, labels = _ticks(names)
    ax.set_xticks(positions, labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.set_yticks(positions, labels)
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
    return fig


@styled
def pareto(points: list[dict], chosen: str | None = None) -> "Figure | None":
    """Accuracy (y) against p50 latency (x) at batch 1 and batch 256; marker area grows with file size.

    `points`: {"name", "accuracy", "size", "lat1", "lat256"}; the Pareto front (faster and at least as
    accurate) is joined by a dashed line.
    """
    panels = [(key, label) for key, label in (("lat1", "batch 1"), ("lat256", "batch 256"))
              if any(number(p.get(key)) is not None and number(p.get("accuracy")) is not None for p in points)]
    if not panels:
        return None
    fig = new_figure((4.3 * len(panels) + 0.6, 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
    sizes = [number(p.get("size")) or 0.0 for p in points]
    biggest = max(sizes) or 1.0
    colors = _colors(len(points))
    names = short_names([p.get("name", "?") for p in points], 40)
    for ax, (key, label) in zip(axes[0], panels):
        pts = [(i, p) for i, p in enumerate(points) if number(p.get(key)) is not None and number(p.get("accuracy"))
               is not None]
        for i, p in pts:
            is_chosen = p.get("name") == chosen
            ax.scatter(p[key], p["accuracy"], s=40 + 560 * (sizes[i] / biggest), alpha=0.6,
                       color=colors[i], edgecolors="black" if is_chosen else "none",
                       linewidths=2 if is_chosen else 0, label=names[i])
        front, best = [], -1.0
        for _, p in sorted(pts, key=lambda ip: (ip[1][key], -ip[1]["accuracy"])):
            if p["accuracy"] > best:
                front.append(p)
                best = p["accuracy"]
        if len(front) > 1:
            ax.plot([p[key] for p in front], [p["accuracy"] for p in front], "--", color="#888", lw=1)
        values = [p[key] for _, p in pts]
        if min(values) > 0 and max(values) / min(values) > 20:  # one slow variant would squash the others
            from matplotlib.ticker import FuncFormatter, NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            label += ", log scale"
        ax.set_xlabel(f"latency p50 at {label} (ms)")
        ax.set_ylabel("test accuracy")
        ax.set_title(label)
        ax.margins(0.2)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for h in handles:
        h.set_sizes([60])
    rows = (len(labels) + 2) // 3
    fig.legend(handles, labels, loc="upper center", ncol=min(3, len(labels)), frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("accuracy against latency (marker area = file size; black ring = chosen; dashed = Pareto front)",
                 fontsize=9)
    fig.tight_layout()
    fig.subplots_adjust(bottom=0.16 + 0.0 * rows)
    return fig


@styled
def size_bars(rows: list[dict]) -> "Figure | None":
    """Nominal size (parameters x bits) against bytes on disk, per variant; a variant whose nominal size is not
    known (None) has no nominal bar."""
    rows = [r for r in rows if number(r.get("nominal")) is not None or number(r.get("disk")) is not None]
    if not rows:
        return None
    fig = new_figure((7.6, 0.9 + 0.42 * len(rows)))
    ax = fig.subplots()
    ys = range(len(rows))
    known = [(y, number(r.get("nominal"))) for y, r in zip(ys, rows) if number(r.get("nominal")) is not None]
    ax.barh([y + 0.2 for y, _ in known], [v / 1024 for _, v in known], height=0.4,
            color=PALETTE[0], label="nominal (parameters x stored weights' bit width; a routed variant: both models)")
    ax.barh([y - 0.2 for y in ys], [(number(r.get("disk")) or 0) / 1024 for r in rows], height=0.4,
            color=PALETTE[1], label="on disk")
    ax.set_yticks(list(ys), short_names([r.get("name", "?") for r in rows], 40))
    ax.invert_yaxis()
    ax.set_xlabel("KiB")
    ax.legend(frameon=False, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    fig.tight_layout()
    return fig


@styled
def importance_bars(items: list[tuple[str, float]], title: str = "global importance") -> "Figure | None":
    """Horizontal bars of the most important features (when the stage gave numbers but no figure)."""
    items = [(str(n), v) for n, v in items if number(v) is not None][:20]
    if not items:
        return None
    fig = new_figure((7.0, 0.8 + 0.3 * len(items)))
    ax = fig.subplots()
    ax.barh(range(len(items)), [v for _, v in items], color=PALETTE[0])
    ax.set_yticks(range(len(items)), short_names([n for n, _ in items], 30))
    ax.invert_yaxis()
    ax.set_title(title)
    fig.tight_layout()
    return fig
