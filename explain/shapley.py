"""The toolkit's Shapley estimator: antithetic permutation sampling with batched forward passes.

For each sample, a permutation of the features and its reverse are walked from
the baseline to the input, one feature at a time; the change of the target
output at each step is that feature's marginal contribution. Every walk is one
batched forward pass of D+1 rows, and its contributions sum exactly to
f(x) - f(baseline), so the estimate is complete by construction. The average
over permutations is unbiased; pairing each permutation with its reverse
cancels much of the variance. For an additive (e.g. linear) model every
permutation gives the exact Shapley values w * (x - baseline).
"""

from __future__ import annotations

import numpy as np


def shapley_permutation(forward_numpy, x: np.ndarray, targets: np.ndarray, baseline: np.ndarray, *,
                        n_permutations: int = 32, seed: int = 0, max_rows: int = 65536,
                        groups: np.ndarray | None = None) -> np.ndarray:
    """Shapley values of the target output for each sample of `x` (N, *shape) against one baseline.

    Args:
        forward_numpy: maps (M, *shape) float32 to (M, classes) outputs.
        targets: (N,) class per sample.
        baseline: (*shape) reference input.
        n_permutations: permutations per sample (rounded up to an even number: antithetic pairs).
        groups: optional (*shape) integer map of feature groups (values 0..G-1) attributed together.
        max_rows: rows per forward pass.

    Returns:
        (N, *shape) attributions; each sample's sum equals f(x)[t] - f(baseline)[t].
    """
    x = np.asarray(x, np.float32)
    n, shape = len(x), x.shape[1:]
    flat_x = x.reshape(n, -1)
    flat_b = np.asarray(baseline, np.float32).reshape(-1)
    d = flat_x.shape[1]
    group_of = np.arange(d) if groups is None else np.asarray(groups).reshape(-1)
    g = int(group_of.max()) + 1
    members = np.zeros((g, d), np.float32)
    members[group_of, np.arange(d)] = 1.0
    rng = np.random.default_rng(seed)
    half = max(1, (n_permutations + 1) // 2)
    perms = []
    for _ in range(half):
        p = rng.permutation(g)
        perms += [p, p[::-1]]
    perms = np.stack(perms)                                       # (P, G)
    p_count = len(perms)
    # masks[p, k] = features switched on after k steps of permutation p: (P, G+1, D)
    order_onehot = members[perms]                                 # (P, G, D)
    masks = np.concatenate([np.zeros((p_count, 1, d), np.float32), np.cumsum(order_onehot, axis=1)], axis=1)
    masks = np.minimum(masks, 1.0)
    rows_per_sample = p_count * (g + 1)
    per_chunk = max(1, max_rows // rows_per_sample)
    phi_groups = np.zeros((n, g), np.float64)
    for start in range(0, n, per_chunk):
        xs, ts = flat_x[start:start + per_chunk], targets[start:start + per_chunk]
        m = len(xs)
        # rows = baseline + mask * (x - baseline), for every sample, permutation and step
        diff = (xs - flat_b)[:, None, None, :]                    # (m, 1, 1, D)
        rows = flat_b + masks[None] * diff                        # (m, P, G+1, D)
        out = forward_numpy(rows.reshape(-1, *shape))
        out = out.reshape(m, p_count, g + 1, -1)[np.arange(m), :, :, ts]   # (m, P, G+1)
        contrib = np.diff(out.astype(np.float64), axis=2)         # (m, P, G): contribution of the k-th feature added
        inverse = np.argsort(perms, axis=1)                       # position of each group in each permutation
        per_group = np.take_along_axis(contrib, np.broadcast_to(inverse[None], contrib.shape), axis=2)
        phi_groups[start:start + m] = per_group.mean(axis=1)
    # spread each group's value over its members in proportion to (x - baseline), evenly where that is 0
    if groups is None:
        phi = phi_groups
    else:
        delta = np.abs(flat_x - flat_b) + 1e-12
        share = delta / (delta @ members.T)[:, group_of]
        phi = phi_groups[:, group_of] * share
    return phi.reshape(n, *shape).astype(np.float32)
