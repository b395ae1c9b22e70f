"""Baseline strategies beside TAUDIS: random, uncertainty-only and core-set (k-center).

Each returns the selected images in order; :mod:`taudis.select.strategies` wraps them into a
Selection. The diversity-only baseline lives with TAUDIS in strategies.py, since it reuses the
cover and the vote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from taudis.data.instances import read_shard
from taudis.select.selection import SelectedImage
from taudis.select.vote import fill_order, fill_reason


def random_images(image_ids: np.ndarray, image_uncertainty: np.ndarray, budget: int, seed: int) -> list[SelectedImage]:
    """B pool images drawn uniformly without replacement (numpy PCG64 seeded with ``seed``)."""
    picks = np.random.default_rng(seed).permutation(image_ids.shape[0])[: min(budget, image_ids.shape[0])]
    return [
        SelectedImage(int(image_ids[p]), r + 1, 0, float(image_uncertainty[p]), False, f"random draw (seed {seed})")
        for r, p in enumerate(picks.tolist())
    ]


def uncertainty_images(
    image_ids: np.ndarray, image_uncertainty: np.ndarray, counts: np.ndarray, budget: int, aggregation: str, metric: str
) -> list[SelectedImage]:
    """The B images of highest image-level uncertainty (ties: lower id; images without instances last)."""
    order = fill_order(image_ids, image_uncertainty, counts)[:budget]
    return [
        SelectedImage(
            int(image_ids[p]),
            r + 1,
            0,
            float(image_uncertainty[p]),
            False,
            fill_reason(float(image_uncertainty[p]), int(counts[p]), aggregation, metric),
        )
        for r, p in enumerate(order.tolist())
    ]


def image_embeddings(
    shard_paths: Sequence[Path], image_ids: np.ndarray, eligible: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Image embeddings: the mean of each image's instance embeddings, renormalised to unit length.

    Streams over the shards. Returns (float32 (M, d) embeddings, bool (M,) has an embedding);
    an image with no instance has a zero row and False. (An image whose instance embeddings sum
    to zero keeps a zero row but True: it has instances.)
    """
    m = image_ids.shape[0]
    has = np.zeros(m, bool)
    sums: np.ndarray | None = None
    for s, path in enumerate(shard_paths):
        keep = eligible[offsets[s] : offsets[s + 1]]
        if not keep.any():
            continue  # also skips shards without instances, whose embedding width may be 0
        shard = read_shard(path, validate=False)
        if sums is None:
            sums = np.zeros((m, shard.embeddings.shape[1]), np.float64)
        pos = np.searchsorted(image_ids, np.asarray(shard.instance_image)[keep])
        emb = np.asarray(shard.embeddings, dtype=np.float64)[keep]
        order = np.argsort(pos, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(pos[order]) != 0])
        sums[pos[order][starts]] += np.add.reduceat(emb[order], starts, axis=0)
        has[pos] = True
        del shard
    if sums is None:
        return np.zeros((m, 0), np.float32), has
    norms = np.linalg.norm(sums, axis=1)
    nonzero = norms > 0
    out = np.zeros(sums.shape, np.float32)
    out[nonzero] = (sums[nonzero] / norms[nonzero, None]).astype(np.float32)
    return out, has


def k_center(
    embeddings: np.ndarray, budget: int, first: int | None = None, centers: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center (farthest-first traversal) on unit vectors, distance 1 - cos.

    Starts from the rows ``centers`` (embeddings already covered, e.g. the labelled images): each
    step takes the row farthest from its nearest center or chosen row (ties: the lower row).
    Without centers it starts from row ``first``. Returns (chosen rows in order, each one's
    distance when chosen; a first row chosen without centers gets inf).
    """
    n = embeddings.shape[0]
    budget = min(budget, n)
    chosen = np.empty(budget, np.int64)
    dist_at = np.empty(budget)
    if budget == 0:
        return chosen, dist_at
    x = np.asarray(embeddings, dtype=np.float32)
    nearest = np.full(n, np.inf)
    if centers is not None and len(centers):
        c = np.asarray(centers, dtype=np.float32)
        for start in range(0, c.shape[0], 1024):  # blocks bound the memory at n x 1024
            nearest = np.minimum(nearest, (1.0 - x @ c[start : start + 1024].T).min(axis=1).astype(np.float64))
        nxt = int(np.argmax(nearest))
        d_next = float(nearest[nxt])
    elif first is None:
        raise ValueError("k_center needs a first row or centers")
    else:
        nxt, d_next = first, np.inf
    for t in range(budget):
        chosen[t], dist_at[t] = nxt, d_next
        nearest = np.minimum(nearest, 1.0 - (x @ x[nxt]).astype(np.float64))
        nearest[chosen[: t + 1]] = -np.inf  # never pick a chosen row again
        nxt = int(np.argmax(nearest))
        d_next = float(nearest[nxt])
    return chosen, dist_at


def coreset_images(
    image_ids: np.ndarray,
    embeddings: np.ndarray,
    has_embedding: np.ndarray,
    image_uncertainty: np.ndarray,
    budget: int,
    seed: int,
    centers: np.ndarray | None = None,
) -> list[SelectedImage]:
    """Core-set (Sener and Savarese 2018): greedy k-center on image embeddings of the images that have instances.

    ``centers`` are the labelled images' embeddings: the pool images farthest from everything
    labelled come first. Without them (no labelled image has a predicted instance) the first
    center is drawn at random (``seed``). Images without instances have no embedding; they come
    after the k-center picks, in image-id order, only when B exceeds the images that have one
    (marked filled).
    """
    with_emb = np.flatnonzero(has_embedding)
    budget = min(budget, image_ids.shape[0])
    images: list[SelectedImage] = []
    if with_emb.size:
        use_centers = centers is not None and len(centers) > 0
        first = None if use_centers else int(np.random.default_rng(seed).integers(with_emb.size))
        rows, dists = k_center(embeddings[with_emb], budget, first, centers if use_centers else None)
        for r, (row, d) in enumerate(zip(rows.tolist(), dists.tolist(), strict=True)):
            p = int(with_emb[row])
            if r == 0 and not use_centers:
                why = f"first center (random, seed {seed}: no labelled image has an embedding)"
            else:
                why = f"k-center: distance {d:.6g} to the nearest labelled or chosen image"
            images.append(SelectedImage(int(image_ids[p]), r + 1, 0, float(image_uncertainty[p]), False, why))
    for p in np.flatnonzero(~has_embedding)[: budget - len(images)].tolist():
        reason = "filled: no predicted instance, so no embedding (image-id order)"
        images.append(SelectedImage(int(image_ids[p]), len(images) + 1, 0, float(image_uncertainty[p]), True, reason))
    return images
