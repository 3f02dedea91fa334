"""Views of attributions as `matplotlib.figure.Figure` objects (saved as PNG files by `views`), one kind per layout.

Every sample is explained for the class the model predicts for it (`explain_model`), so the axes say so: an
attribution to another class (the true one, say) would read differently.

- features: global importance bars and a per-sample beeswarm (colour = feature value);
- image: heat-map overlays for a few samples per class;
- signal (and sequences): attribution over time steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainers.figures import new_figure, short_names


def element_names(spec) -> list[str]:
    """A name per input element, as used in result.json's global importance."""
    shape = tuple(spec.input_shape)
    if len(shape) == 1:
        return list(spec.feature_names) if spec.feature_names and len(spec.feature_names) == shape[0] else \
            [f"x{i}" for i in range(shape[0])]
    if len(shape) == 2:
        return [f"t={t}" for t in range(shape[1])]
    return [f"r{r}c{c}" for r in range(shape[1]) for c in range(shape[2])]


def global_importance(spec, values: np.ndarray, grouped: bool = True,
                      whole_columns: bool = False) -> dict[str, float | None]:
    """Mean |attribution| per feature (tabular), per time step (signals) or per pixel (images), over channels.

    For a model trained on a table, `grouped` gives the user's columns: the attributions of a column's
    encoded inputs (one-hot levels, missing indicator) are summed per sample first, then averaged in size.
    `whole_columns`: the method weighs a column as a whole and spreads the weight evenly over its encoded
    inputs (lime), so in the ungrouped view those inputs get None: an even share is no per-level importance.
    """
    table = (getattr(spec, "preprocessing", None) or {}).get("table")
    if grouped and table and spec.layout == "features":
        return _grouped(table["groups"], element_names(spec), values.reshape(len(values), -1))
    if whole_columns and table and spec.layout == "features":
        names = element_names(spec)
        columns = [table["groups"].get(n, n) for n in names]
        shared = {c for c in columns if columns.count(c) > 1}
        plain = global_importance(spec, values, grouped=False)
        return {n: None if c in shared else plain[n] for n, c in zip(names, columns)}
    a = np.abs(values)
    if a.ndim == 3:          # (N, C, L): sum over channels
        a = a.sum(1)
    elif a.ndim == 4:        # (N, C, H, W)
        a = a.sum(1).reshape(len(a), -1)
    return {name: float(v) for name, v in zip(element_names(spec), a.mean(0))}


def _grouped(groups: dict[str, str], names: list[str], values: np.ndarray) -> dict[str, float]:
    columns = list(dict.fromkeys(groups.get(n, n) for n in names))
    out = {}
    for column in columns:
        index = [i for i, n in enumerate(names) if groups.get(n, n) == column]
        out[column] = float(np.abs(values[:, index].sum(1)).mean())
    return out


# The longest name drawn on an axis: a 500-character feature name once made a figure 3945 px wide, its bars a tenth.
LABEL_CHARS = 30


def _label(text) -> str:
    """Plain text for matplotlib: a `$` in a user's feature or class name must not start mathtext."""
    return str(text).replace("$", r"\$")


def _labels(names, limit: int = LABEL_CHARS) -> list[str]:
    """Names for an axis: one line each, shortened (told apart where two would read the same), `$` escaped."""
    return [_label(n) for n in short_names(names, limit)]


TARGET = "each sample's predicted class"


def save(fig, path: Path) -> str:
    """Write `fig` as a PNG file; returns the file name. Figures made here belong to no pyplot state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path.name


def importance_bars(importance: dict[str, float], title: str, top: int = 20):
    items = sorted(importance.items(), key=lambda kv: -kv[1])[:top][::-1]
    fig = new_figure((6, 0.25 * len(items) + 1.2))
    ax = fig.subplots()
    ax.barh(range(len(items)), [v for _, v in items], color="#4c72b0")   # by position: labels may repeat
    ax.set_yticks(range(len(items)), _labels([k for k, _ in items]))
    ax.set_xlabel(f"mean |attribution| to {TARGET}")
    ax.set_title(title)
    return fig


def beeswarm(spec, x: np.ndarray, values: np.ndarray, title: str, top: int = 15):
    """Per-sample attributions of the most important features, coloured by the feature's value."""
    flat_a, flat_x = values.reshape(len(values), -1), x.reshape(len(x), -1)
    names = element_names(spec) if len(spec.input_shape) == 1 else [f"x{i}" for i in range(flat_a.shape[1])]
    order = np.argsort(-np.abs(flat_a).mean(0))[:top][::-1]
    fig = new_figure((6, 0.3 * len(order) + 1.2))
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    for row, j in enumerate(order):
        v = flat_x[:, j]
        colour = (v - v.min()) / (np.ptp(v) or 1.0)
        ax.scatter(flat_a[:, j], row + rng.uniform(-0.25, 0.25, len(v)), c=colour, cmap="coolwarm", s=10)
    ax.set_yticks(range(len(order)), _labels([names[j] for j in order]))
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel(f"attribution to {TARGET} (colour: feature value, blue low, red high)")
    ax.set_title(title)
    return fig


def image_overlays(x: np.ndarray, values: np.ndarray, labels: np.ndarray, class_names, title: str,
                   per_class: int = 1, max_classes: int = 10, targets: np.ndarray | None = None):
    """Each chosen sample in grey with its attribution (summed over channels) as a red/blue overlay, titled with
    the class it was explained for (`targets`, the predicted class) and, where it differs, its true label."""
    picks = []
    for c in np.unique(labels)[:max_classes]:
        picks += list(np.flatnonzero(labels == c)[:per_class])
    cols = min(5, len(picks))
    rows = int(np.ceil(len(picks) / cols))
    fig = new_figure((2 * cols, 2.1 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks):
        img = x[i].mean(0)
        heat = values[i].sum(0)
        lim = np.abs(heat).max() or 1.0
        ax.imshow(img, cmap="gray_r")
        ax.imshow(heat, cmap="bwr", vmin=-lim, vmax=lim, alpha=0.6)
        if targets is None:
            ax.set_title(_labels([class_names[labels[i]]])[0], fontsize=9)
        else:
            text = f"predicted {class_names[targets[i]]}"
            if targets[i] != labels[i]:
                text += f" (true {class_names[labels[i]]})"
            ax.set_title(_labels([text], 2 * LABEL_CHARS)[0], fontsize=9)
    fig.suptitle(title)
    return fig


def over_time(values: np.ndarray, title: str, samples: int = 5):
    """Mean |attribution| per time step (channels summed), with a few samples' signed curves."""
    a = values if values.ndim == 3 else values[:, None, :]
    signed = a.sum(1)
    fig = new_figure((7, 3))
    ax = fig.subplots()
    for s in signed[:samples]:
        ax.plot(s, lw=0.8, alpha=0.5)
    ax.plot(np.abs(a).sum(1).mean(0), color="black", lw=2, label="mean |attribution|")
    ax.set_xlabel("time step")
    ax.set_ylabel("attribution to predicted class")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    return fig


def drift_chart(rows: list[dict]):
    """Top-k overlap of each variant (95% interval) against the noise and randomisation floors."""
    fig = new_figure((6, 0.5 * len(rows) + 1.5))
    ax = fig.subplots()
    labels = _labels([f"{r['variant']} / {r['ran']}" for r in rows], 60)
    y = np.arange(len(rows))
    mid = np.array([r["topk_overlap"] for r in rows])
    err = np.array([[m - r["topk_overlap_lo"], r["topk_overlap_hi"] - m] for m, r in zip(mid, rows)]).T
    ax.errorbar(mid, y, xerr=err, fmt="o", color="#4c72b0", label="top-k overlap (95% CI)")
    for i, r in enumerate(rows):
        ax.plot([r["noise_floor_topk"]], [i], "g|", ms=14, label="noise floor" if i == 0 else None)
        if r.get("random_floor_topk") is not None:
            ax.plot([r["random_floor_topk"]], [i], "r|", ms=14, label="randomisation floor" if i == 0 else None)
    ax.axvline(0.7, color="grey", ls="--", lw=0.8)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("top-k overlap with the original")
    ax.legend(fontsize=7, loc="lower left")
    return fig


def views(spec, x: np.ndarray, labels: np.ndarray, values: np.ndarray, method: str, directory: Path,
          targets: np.ndarray | None = None) -> dict[str, str]:
    """The figures for one method's attributions, saved in `directory`: {caption: 'figures/<file>.png'}.
    `labels` are the true classes, `targets` the classes explained (each sample's predicted class)."""
    out = {}
    imp = global_importance(spec, values)
    out[f"global importance ({method})"] = save(importance_bars(imp, f"global importance: {method}"),
                                                directory / f"importance_{method}.png")
    if spec.layout == "image" and len(spec.input_shape) == 3:
        out[f"attribution overlays ({method})"] = save(
            image_overlays(x, values, labels, spec.class_names, f"{method} (red: for the predicted class)",
                           targets=targets),
            directory / f"overlays_{method}.png")
    elif len(spec.input_shape) == 2 or spec.family == "lstm":
        steps = values.reshape(len(values), *spec.input_shape) if len(spec.input_shape) == 2 else \
            values.reshape(len(values), -1)
        out[f"attribution over time ({method})"] = save(over_time(steps, f"{method}: attribution over time steps"),
                                                        directory / f"time_{method}.png")
    if len(spec.input_shape) == 1:
        out[f"per-sample attributions ({method})"] = save(beeswarm(spec, x, values, f"per-sample {method}"),
                                                          directory / f"beeswarm_{method}.png")
    return {k: f"figures/{v}" for k, v in out.items()}
