"""The pool a selection draws from, and parameter checks shared by every strategy.

The pool is every image id listed by the shards (with instances or not) minus ``exclude``; its
instances are the shards' instances whose image is in the pool. Instances are addressed by their
global index (shard-name order, then row order), as in :class:`taudis.select.uncertainty.PoolScores`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taudis.data.instances import read_shard
from taudis.select.uncertainty import aggregate_images, check_aggregation, check_metric, instance_counts

STRATEGIES = ("taudis", "random", "uncertainty", "coreset", "diversity")
UNIVERSES = ("candidates", "pool")


def check_params(
    budget: int, strategy: str, alpha: float, beta: float, sigma: float, metric: str, aggregation: str
) -> None:
    """Reject bad parameters before any work, with a message that names the parameter.

    Raises:
        ValueError: budget <= 0, beta < 1, alpha < beta, sigma outside [-1, 1], or an unknown
            strategy, metric or aggregation.
    """
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget <= 0:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if not math.isfinite(beta) or beta < 1:
        raise ValueError(f"beta must be >= 1 (choose at least B instances), got {beta!r}")
    if not math.isfinite(alpha) or alpha < beta:
        raise ValueError(f"alpha must be >= beta (oversample at least as many as are chosen), got {alpha!r} < {beta!r}")
    if not math.isfinite(sigma) or not -1 <= sigma <= 1:
        raise ValueError(f"sigma is a cosine threshold and must lie in [-1, 1], got {sigma!r}")
    check_metric(metric)
    check_aggregation(aggregation)


def scaled_budget(factor: float, budget: int) -> int:
    """ceil(factor * budget), robust to float noise (1.1 * 10 is 11, not 12)."""
    return math.ceil(round(factor * budget, 9))


@dataclass(frozen=True)
class Pool:
    """The images and instances a selection may choose, with per-image facts."""

    image_ids: np.ndarray  # int64 (M,), sorted
    eligible: np.ndarray  # bool (N,), instance belongs to a pool image
    instance_counts: np.ndarray  # int64 (M,)
    excluded: np.ndarray  # int64, sorted unique ids asked to be excluded
    removed: int  # how many of the shards' images those ids took out of the pool

    @property
    def num_images(self) -> int:
        return int(self.image_ids.shape[0])

    @property
    def num_instances(self) -> int:
        return int(self.eligible.sum())


def make_pool(image_ids: np.ndarray, instance_image: np.ndarray, exclude: Collection[int]) -> Pool:
    """The pool: ``image_ids`` minus ``exclude``, and which instances belong to it."""
    excluded = np.unique(np.asarray(list(exclude), dtype=np.int64))
    all_ids = np.asarray(image_ids, dtype=np.int64)
    ids = all_ids[~np.isin(all_ids, excluded)]
    eligible = ~np.isin(instance_image, excluded) if excluded.size else np.ones(instance_image.shape[0], bool)
    return Pool(
        image_ids=ids,
        eligible=eligible,
        instance_counts=instance_counts(ids, instance_image),
        excluded=excluded,
        removed=int(all_ids.size - ids.size),
    )


def image_uncertainty(pool: Pool, instance_image: np.ndarray, uncertainty: np.ndarray, aggregation: str) -> np.ndarray:
    """Image-level uncertainty of each pool image (0 for one without instances)."""
    return aggregate_images(pool.image_ids, instance_image, uncertainty, aggregation)


def gather_embeddings(shard_paths: Sequence[Path], offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float32 embeddings of the instances at global indices ``rows``, in that order.

    Reads only the requested rows of each shard (memory-mapped), one shard at a time.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out: np.ndarray | None = None
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    bounds = np.searchsorted(sorted_rows, offsets)
    for s, path in enumerate(shard_paths):
        lo, hi = bounds[s], bounds[s + 1]
        if hi == lo:
            continue  # also skips shards without instances, whose embedding width may be 0
        shard = read_shard(path, validate=False)  # validated when scored
        if out is None:
            out = np.empty((rows.shape[0], shard.embeddings.shape[1]), np.float32)
        out[order[lo:hi]] = shard.embeddings[sorted_rows[lo:hi] - offsets[s]]
        del shard
    return out if out is not None else np.zeros((0, 0), np.float32)


def budget_notes(budget: int, pool: Pool) -> list[str]:
    """Notes on the budget against the pool (the whole pool is selected when B exceeds it)."""
    notes = []
    if pool.excluded.size:
        absent = pool.excluded.size - pool.removed
        note = f"excluded {pool.removed} image ids from the pool"
        notes.append(note + (f" ({absent} more to exclude are not in it)" if absent else ""))
    if budget > pool.num_images:
        notes.append(f"budget {budget} exceeds the pool's {pool.num_images} images: selecting the whole pool")
    if pool.num_instances == 0:
        notes.append("the pool has no predicted instance")
    return notes
