"""The toolkit's Shapley estimator: antithetic permutation sampling, batched, with a standard error per sample.

For each sample, a permutation of the features and its reverse are walked from
the baseline to the input, one feature at a time; the change of the target
output at each step is that feature's marginal contribution. Every walk sums
exactly to f(x) - f(baseline), so the estimate is complete by construction. The
average over permutations is unbiased; pairing each permutation with its reverse
(antithetic sampling: Mitchell, Cooper, Frank and Holmes, "Sampling Permutations
for Shapley Value Estimation", JMLR 23, 2022) cancels much of the variance, since
a feature early in one walk is late in the other. For an additive (e.g. linear)
model every permutation gives the exact Shapley values w * (x - baseline).

Error bars: the mean of each antithetic pair is one independent draw, so the
standard error of each value is the spread of the pair means over sqrt(pairs).
The relative error bound of a sample is the 95% quantile of ||estimate - exact||
/ ||estimate|| under that normal approximation: the squared error norm is a
weighted sum of chi-square(1) terms (weights: the eigenvalues of the pair means'
covariance over pairs), approximated (Satterthwaite) by a scaled chi-square with
tr(C)^2 / tr(C^2) degrees of freedom, and since C is itself estimated from the
pairs, its ratio to that estimate by an F distribution. C is the full covariance,
not its diagonal: a sample's values are correlated (every walk's contributions sum
to the same total), and the diagonal form's bound covered the true error in 0.90
of 1-D CNN samples where the full form covers 0.98 (docs/results.md).

Adaptive sampling: every sample starts with `MIN_PAIRS` pairs; a sample whose
bound is above `tolerance` gets the pairs the bound's 1/sqrt(pairs) decay says it
needs (10% over, at least a quarter more), until the bound is met or the next
round would pass `max_evaluations` model rows. Doubling instead overshot: 14% more
permutations for the same coverage, measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_PAIRS = 8            # first round: 16 permutations, enough for a usable variance estimate
DEFAULT_MAX_PERMUTATIONS = 128
CONFIDENCE = 0.95
STEP_SHARE = 4
GROWTH = 1.1            # pairs granted over the 1/sqrt(pairs) estimate of what a sample still needs
ROWS_PER_PASS = 1024     # rows per forward pass: small batches stay in cache (a 1-D CNN is 2-3x slower per row at 8k)
# input elements per forward pass at most (5 MB of float32): 1,024 rows of up to 1,280 elements (digits, 28 x 28,
# tables), 320 rows of a 64 x 64 image (5 walks of 63 patches: over COMPILE_ROWS, so the ONNX twin still serves
# them). A model's activations grow with the input, so rows alone did not bound memory: 1,024 rows of 1x64x64
# through a 32-channel CNN peaked at 2.24 GB for 4 samples.
ELEMENTS_PER_PASS = 5 * 2 ** 18


def rows_per_pass(elements: int) -> int:
    """Rows per forward pass for inputs of `elements` elements each: ROWS_PER_PASS, fewer for large inputs."""
    return int(max(1, min(ROWS_PER_PASS, ELEMENTS_PER_PASS // max(int(elements), 1))))


@dataclass
class ShapleyEstimate:
    """Shapley values with their error bars.

    Attributes:
        values: (N, *shape) estimates; each sample sums to f(x)[t] - f(baseline)[t].
        standard_error: (N, *shape) standard error of each value; NaN with one antithetic pair (n_permutations
            1 or 2): one draw estimates no variance.
        error_bound: (N,) relative error ||estimate - exact|| / ||estimate|| at 95% confidence; inf with one pair.
        evaluations: (N,) model rows spent on each sample.
        permutations: (N,) permutations walked for each sample.
        converged: (N,) error_bound <= tolerance (all True for a fixed permutation count).
    """

    values: np.ndarray
    standard_error: np.ndarray
    error_bound: np.ndarray
    evaluations: np.ndarray
    permutations: np.ndarray
    converged: np.ndarray


def relative_error_bound(values: np.ndarray, standard_error: np.ndarray, confidence: float = CONFIDENCE,
                         variance_dof=None) -> np.ndarray:
    """(N,) bound on ||estimate - exact|| / ||estimate|| at `confidence`, from per-value standard errors (N, ...).

    `variance_dof`: degrees of freedom of each sample's variance estimates (draws - 1), scalar or (N,); the
    squared error over its estimate then follows an F distribution rather than a chi-square over its dof,
    which widens the bound when few draws estimated the variance. None: variances taken as known.
    """
    from scipy.stats import chi2, f

    v = np.asarray(values, np.float64).reshape(len(values), -1)
    s2 = np.asarray(standard_error, np.float64).reshape(len(values), -1) ** 2
    total, fourth = s2.sum(1), (s2 ** 2).sum(1)
    dof = np.where(fourth > 0, total ** 2 / np.where(fourth > 0, fourth, 1.0), 1.0)
    if variance_dof is None:
        quantile = chi2.ppf(confidence, dof) / dof
    else:
        quantile = f.ppf(confidence, dof, dof * np.maximum(np.asarray(variance_dof, np.float64), 1.0))
    error = np.sqrt(total * quantile)
    norm = np.linalg.norm(v, axis=1)
    return np.where(norm > 0, error / np.where(norm > 0, norm, 1.0), np.where(error > 0, np.inf, 0.0))


def draws_error_bound(draws: list[np.ndarray], values: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """(N,) bound on ||estimate - exact|| / ||values[i]|| at `confidence`, sample i's estimate being the mean of
    its independent draws `draws[i]` (k_i, G), k_i >= 2: Satterthwaite on the draws' full covariance C / k_i, its
    tr(C^2) taken from the k x k Gram matrix of the centred draws (never a G x G matrix), F(dof, dof (k - 1))."""
    from scipy.stats import f

    k = np.array([len(d) for d in draws], np.float64)
    trace, square = np.zeros(len(draws)), np.zeros(len(draws))
    for i, d in enumerate(draws):
        centred = d - d.mean(0)
        gram = centred @ centred.T
        trace[i] = np.trace(gram) / ((k[i] - 1) * k[i])             # tr(C / k): the expected squared error
        square[i] = (gram ** 2).sum() / ((k[i] - 1) * k[i]) ** 2    # tr((C / k)^2)
    dof = np.where(square > 0, trace ** 2 / np.where(square > 0, square, 1.0), 1.0)
    error = np.sqrt(trace * f.ppf(confidence, dof, dof * np.maximum(k - 1, 1)))
    norm = np.linalg.norm(np.asarray(values, np.float64).reshape(len(draws), -1), axis=1)
    return np.where(norm > 0, error / np.where(norm > 0, norm, 1.0), np.where(error > 0, np.inf, 0.0))


def shapley_estimate(forward_numpy, x: np.ndarray, targets: np.ndarray, baseline: np.ndarray, *,
                     tolerance: float | None = 0.1, max_evaluations: int | None = None,
                     n_permutations: int | None = None, seed: int = 0, groups: np.ndarray | None = None,
                     max_rows: int | None = None, antithetic: bool = True) -> ShapleyEstimate:
    """Shapley values of the target output for each sample of `x` (N, *shape) against one baseline, with error bars.

    Args:
        forward_numpy: maps (M, *shape) float32 to (M, classes) outputs.
        targets: (N,) class per sample.
        baseline: (*shape) reference input.
        tolerance: relative error bound (at 95%) a sample is done at; None: run to the cap.
        max_evaluations: model rows per sample at most (default: those of 128 permutations); the first
            round of 16 permutations always runs.
        n_permutations: a fixed number of permutations instead (rounded up to pairs); tolerance is then ignored.
        groups: optional (*shape) integer map of feature groups (values 0..G-1) attributed together.
        max_rows: rows per forward pass (a walk's interior steps at least); None: `rows_per_pass` of the input's
            size, which bounds the memory of a pass.
        antithetic: pair each permutation with its reverse; False pairs two independent permutations
            (plain Monte Carlo, for comparison).
    """
    x = np.asarray(x, np.float32)
    n, shape = len(x), x.shape[1:]
    flat_x = x.reshape(n, -1)
    flat_b = np.asarray(baseline, np.float32).reshape(-1)
    d = flat_x.shape[1]
    targets = np.asarray(targets, np.int64)
    group_of = np.arange(d) if groups is None else np.asarray(groups).reshape(-1)
    max_rows = rows_per_pass(d) if max_rows is None else max_rows
    members = group_members(group_of)
    g = len(members)
    rows_per_pair = 2 * max(g - 1, 0)           # interior steps of two walks: both ends are f(baseline), f(x)
    if n_permutations is not None:
        first_pairs, cap_pairs, tolerance = max(1, (n_permutations + 1) // 2), max(1, (n_permutations + 1) // 2), None
    else:
        cap_rows = max_evaluations if max_evaluations is not None else 2 + DEFAULT_MAX_PERMUTATIONS * max(g - 1, 0)
        cap_pairs = max(MIN_PAIRS, (cap_rows - 2) // max(rows_per_pair, 1))
        first_pairs = MIN_PAIRS
    rng = np.random.default_rng(seed)
    ends = forward_numpy(np.concatenate([flat_b[None], flat_x]).reshape(-1, *shape)).astype(np.float64)
    f_base, f_x = ends[0, targets], ends[1 + np.arange(n), targets]
    draws = [np.zeros((0, g)) for _ in range(n)]   # the pair means of each sample (pairs, G)
    active = np.arange(n)
    want = np.full(n, first_pairs)
    while len(active):
        # walk the requested pairs of every active sample, batched across samples
        pair_means = _walk(forward_numpy, flat_x[active], flat_b, targets[active], f_base[active], f_x[active],
                           want[active], members, g, shape, rng, max_rows, antithetic)
        for j, i in enumerate(active):
            draws[i] = np.concatenate([draws[i], pair_means[j]])
        pairs = np.array([len(d) for d in draws])
        values = np.stack([d.mean(0) for d in draws])
        # one pair is one draw: its spread is unknown, not zero (a zero error claimed exact values, 1-7% off)
        se = np.stack([d.std(0, ddof=1) if len(d) > 1 else np.full(g, np.nan) for d in draws]) / np.sqrt(pairs)[:, None]
        values, se, weight = _spread(values, se, flat_x, flat_b, members, group_of, groups is not None)
        bound = draws_error_bound([d * w for d, w in zip(draws, weight)], values) if pairs.min() > 1 \
            else np.full(n, np.inf)
        if tolerance is None:
            still = pairs[active] < cap_pairs
        else:
            still = (bound[active] > tolerance) & (pairs[active] < cap_pairs)
        active = active[still]
        if tolerance is None:
            want[active] = cap_pairs - pairs[active]
        else:
            need = np.ceil(pairs[active] * (bound[active] / tolerance) ** 2 * GROWTH).astype(np.int64) - pairs[active]
            want[active] = np.clip(need, np.maximum(pairs[active] // STEP_SHARE, 1), cap_pairs - pairs[active])
    permutations = 2 * pairs
    converged = np.ones(n, bool) if tolerance is None else bound <= tolerance
    return ShapleyEstimate(values.reshape(n, *shape).astype(np.float32), se.reshape(n, *shape).astype(np.float32),
                           bound, 2 + pairs * rows_per_pair, permutations, converged)


def _walk(forward_numpy, xs, flat_b, ts, f_base, f_x, n_pairs, members, g, shape, rng, max_rows, antithetic):
    """Per sample, `n_pairs[i]` pair means (pairs, G) of the marginal contributions."""
    jobs = []                       # (sample index, permutation)
    for i, k in enumerate(n_pairs):
        for _ in range(int(k)):
            p = rng.permutation(g)
            jobs += [(i, p), (i, p[::-1] if antithetic else rng.permutation(g))]
    contrib = np.zeros((len(jobs), g))
    steps = max(g - 1, 0)
    per_pass = max(1, max_rows // max(steps, 1))
    for start in range(0, len(jobs), per_pass):
        chunk = jobs[start:start + per_pass]
        idx = np.array([i for i, _ in chunk])
        perms = np.stack([p for _, p in chunk])                             # (m, G)
        if steps:
            # masks[j, k] = features switched on after k+1 steps of walk j (interior steps only): (m, G-1, D)
            masks = np.minimum(np.cumsum(members[perms[:, :steps]], axis=1), 1.0)
            rows = flat_b + masks * (xs[idx] - flat_b)[:, None, :]
            rows = rows.reshape(-1, *shape)    # one walk may hold more rows than a pass: passes of max_rows
            out = np.concatenate([forward_numpy(rows[r:r + max_rows]) for r in range(0, len(rows), max_rows)])
            out = out.reshape(len(chunk), steps, -1)
            inner = out[np.arange(len(chunk)), :, ts[idx]].astype(np.float64)  # (m, G-1)
        else:
            inner = np.zeros((len(chunk), 0))
        path = np.concatenate([f_base[idx, None], inner, f_x[idx, None]], axis=1)   # (m, G+1)
        step_gain = np.diff(path, axis=1)                                   # gain of the k-th feature added
        inverse = np.argsort(perms, axis=1)
        contrib[start:start + len(chunk)] = np.take_along_axis(step_gain, inverse, axis=1)
    out, at = [], 0
    for k in n_pairs:
        walks = contrib[at:at + 2 * int(k)]
        out.append(0.5 * (walks[0::2] + walks[1::2]))
        at += 2 * int(k)
    return out


def group_members(group_of: np.ndarray) -> np.ndarray:
    """(G, D) indicator matrix of a flat group map (values 0..G-1): row g marks group g's elements."""
    members = np.zeros((int(group_of.max()) + 1, len(group_of)), np.float32)
    members[group_of, np.arange(len(group_of))] = 1.0
    return members


def group_shares(flat_x, flat_b, members, group_of) -> np.ndarray:
    """(N, D): each element's share of its group, in proportion to |x - baseline| (a group's shares sum to 1)."""
    delta = np.abs(flat_x - flat_b) + 1e-12
    return delta / (delta @ members.T)[:, group_of]


def _spread(values, se, flat_x, flat_b, members, group_of, grouped: bool):
    """Spread each group's value (and error) over its members in proportion to |x - baseline|; also the weight
    per group (N, G), sqrt of the sum of its members' squared shares, that maps a group's error to its members'."""
    if not grouped:
        return values, se, np.ones_like(values)
    share = group_shares(flat_x, flat_b, members, group_of)
    weight = np.sqrt((share ** 2) @ members.T)
    return values[:, group_of] * share, se[:, group_of] * share, weight


def shapley_permutation(forward_numpy, x: np.ndarray, targets: np.ndarray, baseline: np.ndarray, *,
                        n_permutations: int = 32, seed: int = 0, max_rows: int | None = None,
                        groups: np.ndarray | None = None) -> np.ndarray:
    """Shapley values (N, *shape) from a fixed number of permutations (rounded up to antithetic pairs).

    `shapley_estimate` with `n_permutations`: each sample's values sum to f(x)[t] - f(baseline)[t].
    """
    return shapley_estimate(forward_numpy, x, targets, baseline, n_permutations=n_permutations, seed=seed,
                            groups=groups, max_rows=max_rows).values
