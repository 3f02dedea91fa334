"""Weight sharing (Deep Compression, Han et al. 2016): each layer's weights cluster onto a small codebook.

k-means (scikit-learn) groups a tensor's non-zero values into `clusters` centroids, initialised evenly over
the value range (the paper's "linear" initialisation: it keeps the few large weights that matter most,
where density-based initialisation would merge them away). The tensor then holds only centroid values, so
the `sparse-codebook` codec stores one 4-bit index per value. The centroids are then fine-tuned: a
parametrization (`torch.nn.utils.parametrize`) makes every weight read its centroid, so the gradient of a
centroid is the sum of its weights' gradients, as in the paper, and zeros stay zero.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from trainers.codecs import CODEBOOK_SIZE, codebook_sparse


class _Shared(nn.Module):
    """weight = codebook[assignment], with assignment -1 meaning a pruned (zero) weight."""

    def __init__(self, assignment: torch.Tensor, shape: torch.Size):
        super().__init__()
        self.register_buffer("assignment", assignment, persistent=False)
        self.shape = shape

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([codebook, codebook.new_zeros(1)])  # index -1 reads the trailing zero
        return padded[self.assignment].reshape(self.shape)

    def right_inverse(self, codebook: torch.Tensor) -> torch.Tensor:
        return codebook  # registration hands over the codebook itself (see `share`)


def cluster(values: np.ndarray, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, label of each value): k-means with linear initialisation over [min, max]."""
    from sklearn.cluster import KMeans

    distinct = np.unique(values)
    k = min(clusters, len(distinct))
    if k == len(distinct):
        return distinct.astype(np.float32), np.searchsorted(distinct, values)
    init = np.linspace(values.min(), values.max(), k, dtype=np.float64).reshape(-1, 1)
    fit = KMeans(n_clusters=k, init=init, n_init=1, random_state=seed).fit(values.reshape(-1, 1).astype(np.float64))
    return fit.cluster_centers_.ravel().astype(np.float32), fit.labels_


def share(params: list[tuple[nn.Module, str]], clusters: int = CODEBOOK_SIZE, seed: int = 0) -> None:
    """Cluster each (module, name) tensor's non-zero values onto at most `clusters` centroids and make the
    centroids the trainable parameter (zeros stay zero); `unshare` writes the shared values back. A tensor the
    codec stores dense (under half zeros) that has zeros gets at most CODEBOOK_SIZE - 1 centroids: with the zero,
    its values still fit 4-bit indices."""
    for module, name in params:
        weight = getattr(module, name).detach()
        flat = weight.flatten().cpu().numpy()
        nonzero = np.flatnonzero(flat)
        if len(nonzero) == 0:
            continue
        # stored dense, the zeros take one of the codebook's 16 codes: one centroid fewer, or the tensor has 17
        # values and is stored as plain fp32 (a 30%-pruned MLP's file was 1.00x the original's)
        dense_with_zeros = 0 < flat.size - len(nonzero) and not codebook_sparse(1 - len(nonzero) / flat.size)
        centroids, labels = cluster(flat[nonzero], min(clusters, CODEBOOK_SIZE - 1) if dense_with_zeros else clusters,
                                    seed)
        assignment = torch.full((flat.size,), -1, dtype=torch.long)
        assignment[torch.from_numpy(nonzero)] = torch.from_numpy(labels.astype(np.int64))
        assignment = torch.where(assignment < 0, torch.tensor(len(centroids)), assignment).to(weight.device)
        with torch.no_grad():
            setattr(module, name, nn.Parameter(torch.from_numpy(centroids).to(weight.device)))
        parametrize.register_parametrization(module, name, _Shared(assignment, weight.shape), unsafe=True)


def unshare(params: list[tuple[nn.Module, str]]) -> None:
    """Replace each parametrized tensor by its current shared values (a plain parameter again)."""
    for module, name in params:
        if parametrize.is_parametrized(module, name):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
