"""Whitened embeddings for the cover's cosine graph: every direction the pool varies along counts alike.

Mask-head embeddings are post-ReLU and a few directions carry most of their variance, so raw
cosines crowd near 1 and centred ones mostly compare instances along those few directions.
Whitening maps an embedding x to (x - mean) V diag(1 / sqrt(lambda + eps)), with the mean, the
eigenvectors V and the eigenvalues lambda of the pool's instance embeddings' covariance: unit
variance along every principal direction, so a cosine compares instances relative to how the
pool itself spreads. The statistics are the pool's, never the candidates' alone: a few dozen
candidates in 64 dimensions have a covariance of lower rank than the space, and fully whitened
they would form a regular simplex (every pairwise cosine -1 / (n - 1)), whatever they are.

``eps`` is EPS_SHARE of the mean eigenvalue: directions the pool barely varies along (dead ReLU
units, float noise) are scaled up at most 1 / sqrt(EPS_SHARE) times more than an average one,
instead of being blown up into noise that would decide the cosines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taudis.select.pool import gather_embeddings

EPS_SHARE = 0.01
# Rows read per pass while summing the pool's moments: bounded memory for pools of any size.
CHUNK = 65536


@dataclass(frozen=True)
class Whitening:
    """x -> (x - mean) @ projection, float32 (see the module docstring)."""

    mean: np.ndarray  # float64 (d,)
    projection: np.ndarray  # float64 (d, d)

    def apply(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] == 0:
            return np.zeros((0, self.projection.shape[1]), np.float32)
        return ((np.asarray(x, np.float64) - self.mean) @ self.projection).astype(np.float32)


def fit_whitening(count: int, total: np.ndarray, outer: np.ndarray) -> Whitening:
    """The whitening of a sample from its moments: ``count`` rows, their sum and the sum of their
    outer products. Fewer than two rows, or a sample without spread, give centring alone."""
    d = total.shape[0]
    mean = total / max(count, 1)
    if count < 2:
        return Whitening(mean, np.eye(d))
    cov = (outer - count * np.outer(mean, mean)) / (count - 1)
    lam, vectors = np.linalg.eigh((cov + cov.T) / 2)
    lam = np.clip(lam, 0.0, None)  # rounding can leave tiny negative eigenvalues
    eps = EPS_SHARE * lam.mean()
    if eps <= 0:
        return Whitening(mean, np.eye(d))
    return Whitening(mean, vectors / np.sqrt(lam + eps))


def pool_whitening(shard_paths: Sequence[Path], offsets: np.ndarray, rows: np.ndarray) -> Whitening | None:
    """The whitening fitted to the embeddings of the instances at global indices ``rows`` (the
    pool's), read CHUNK rows at a time; None without rows (then there is nothing to cover)."""
    rows = np.asarray(rows, dtype=np.int64)
    total: np.ndarray | None = None
    outer: np.ndarray | None = None
    for start in range(0, rows.size, CHUNK):
        x = gather_embeddings(shard_paths, offsets, rows[start : start + CHUNK]).astype(np.float64)
        total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
        outer = x.T @ x if outer is None else outer + x.T @ x
    if total is None or outer is None:
        return None
    return fit_whitening(int(rows.size), total, outer)
