"""Synthetic instance tables: pools of predicted instances for tests and benchmarks of selection.

The pool looks like a model's predictions on unlabelled images:

- images hold 0..many instances (a share of images has none; the rest a Poisson count);
- embeddings are clustered: each instance is a unit cluster centre plus Gaussian noise, with a
  per-cluster spread, so at sigma = 0.8 tight clusters are densely connected and loose ones sparse;
- a per-instance difficulty (mostly low: most instances are confident, some uncertain; some
  clusters are harder than others) drives both the class probabilities (peaked when easy,
  flat when hard) and the masks (an ellipse with a sharp sigmoid edge when easy, a soft noisy
  edge when hard);
- class probabilities are a softmax over K classes plus background (background last).

Everything is deterministic per ``seed``: shard ``s`` draws from its own generator seeded with
``(seed, s)``, so shards can be generated (and cached) one at a time. Pools are generated and
written shard by shard (and masks in row chunks), so a 1,000,000-instance pool needs only one
shard's columns in memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taudis.data.instances import write_shard

IMAGE_SIZE = 256
_MASK_CHUNK = 8192
# Ranges, as fractions of the mask side, of the ellipse centre (x, y) and radii (x, y).
_ELLIPSE = ((0.35, 0.65), (0.35, 0.65), (0.2, 0.45), (0.2, 0.45))


@dataclass(frozen=True)
class PoolSpec:
    """What to generate. ``num_clusters`` 0 means max(2, round(sqrt(num_instances) / 2))."""

    num_instances: int
    num_shards: int = 1
    seed: int = 0
    mask_size: int = 28
    embedding_dim: int = 256
    num_classes: int = 5
    mean_instances_per_image: float = 8.0
    empty_image_fraction: float = 0.1
    num_clusters: int = 0
    embedding_dtype: str = "float16"

    @property
    def clusters(self) -> int:
        return self.num_clusters or max(2, round(math.sqrt(self.num_instances) / 2))

    def shard_instances(self, shard: int) -> int:
        base, extra = divmod(self.num_instances, self.num_shards)
        return base + (1 if shard < extra else 0)


def _image_counts(spec: PoolSpec, shard: int) -> np.ndarray:
    """Instances per image of one shard, summing exactly to the shard's instance count."""
    if not 0 <= spec.empty_image_fraction < 1:
        raise ValueError(f"empty_image_fraction must lie in [0, 1), got {spec.empty_image_fraction!r}")
    rng = np.random.default_rng([spec.seed, shard, 0])
    target = spec.shard_instances(shard)
    mean_nonzero = max(spec.mean_instances_per_image, 1.0)
    guess = int(target / (mean_nonzero * (1 - spec.empty_image_fraction)) * 1.3) + 8
    counts = np.zeros(0, np.int64)
    while counts.sum() < target:
        more = 1 + rng.poisson(mean_nonzero - 1, size=guess)
        more[rng.random(guess) < spec.empty_image_fraction] = 0
        counts = np.concatenate([counts, more])
    cut = int(np.searchsorted(np.cumsum(counts), target)) + 1 if target else 0
    counts = counts[:cut].copy()
    if target:
        counts[-1] -= counts.sum() - target
    empties = rng.integers(1, 4)  # every shard also lists a few images with no instance
    return np.concatenate([counts, np.zeros(empties, np.int64)])


def _cluster_model(spec: PoolSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit centres (C, d), per-cluster noise std, per-cluster difficulty in [0, 1])."""
    rng = np.random.default_rng([spec.seed, 1 << 30])
    c = spec.clusters
    centres = rng.standard_normal((c, spec.embedding_dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Within-cluster cosine is about 1 / (1 + d * std^2): spreads d*std^2 in [0.05, 0.6] give
    # cosines from about 0.95 (dense at sigma 0.8) down to 0.63 (sparse).
    spread = rng.uniform(0.05, 0.6, size=c)
    std = np.sqrt(spread / spec.embedding_dim)
    difficulty = rng.beta(2.0, 5.0, size=c)
    return centres.astype(np.float32), std.astype(np.float32), difficulty


def _masks(rng: np.random.Generator, difficulty: np.ndarray, size: int) -> np.ndarray:
    """Soft ellipse masks, float16 (n, size, size); harder instances get softer, noisier edges."""
    n = difficulty.shape[0]
    out = np.empty((n, size, size), np.float16)
    grid = (np.arange(size, dtype=np.float32) + 0.5)[None, :]
    for start in range(0, n, _MASK_CHUNK):
        d = difficulty[start : start + _MASK_CHUNK].astype(np.float32)
        m = d.shape[0]
        cx, cy, ax, ay = (rng.uniform(lo, hi, (m, 1)).astype(np.float32) * size for lo, hi in _ELLIPSE)
        # edge sharpness in 1/pixels: about 4 (crisp) for easy instances, 0.3 (blurred) for hard ones
        sharp = (0.3 + 3.7 * (1 - d) ** 2)[:, None, None]
        dx = ((grid - cx) / ax)[:, None, :]
        dy = ((grid - cy) / ay)[:, :, None]
        r = np.sqrt(dx * dx + dy * dy)
        z = sharp * (1 - r) * np.minimum(ax, ay)[:, :, None]
        z += rng.standard_normal(z.shape, dtype=np.float32) * (1.5 * d)[:, None, None]
        np.clip(z, -30, 30, out=z)
        out[start : start + m] = 1 / (1 + np.exp(-z))
    return out


def shard_columns(spec: PoolSpec, shard: int, first_image_id: int) -> dict[str, Any]:
    """The columns of one shard (keyword arguments of taudis.data.instances.write_shard)."""
    counts = _image_counts(spec, shard)
    rng = np.random.default_rng([spec.seed, shard, 1])
    centres, std, cluster_difficulty = _cluster_model(spec)
    n, k = int(counts.sum()), spec.num_classes
    image_ids = first_image_id + np.arange(counts.shape[0], dtype=np.int64)
    instance_image = np.repeat(image_ids, counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    instance_index = (np.arange(n) - starts).astype(np.int32)
    cluster = rng.integers(0, centres.shape[0], n)
    difficulty = np.clip(rng.beta(1.0, 6.0, n) + 0.6 * cluster_difficulty[cluster] * rng.random(n), 0, 1)
    emb = rng.standard_normal((n, spec.embedding_dim), dtype=np.float32)
    emb *= std[cluster][:, None]
    emb += centres[cluster]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    predicted = cluster % k
    logits = rng.standard_normal((n, k + 1))
    logits[np.arange(n), predicted] += 7 * (1 - difficulty) + 0.3
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    x0 = rng.uniform(0, IMAGE_SIZE - 64, n)
    y0 = rng.uniform(0, IMAGE_SIZE - 64, n)
    wh = rng.uniform(8, 60, (n, 2))
    boxes = np.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], axis=1)
    return {
        "image_ids": image_ids,
        "image_sizes": np.full((image_ids.shape[0], 2), IMAGE_SIZE, np.int32),
        "instance_image": instance_image,
        "instance_index": instance_index,
        "classes": np.argmax(probs[:, :k], axis=1).astype(np.int32),
        "class_probs": probs.astype(np.float32),
        "boxes": boxes.astype(np.float32),
        "mask_probs": _masks(rng, difficulty, spec.mask_size),
        "embeddings": emb.astype(spec.embedding_dtype),
        "class_names": [f"class{i}" for i in range(k)],
        "model_id": f"synthetic-seed{spec.seed}",
    }


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def iter_shard_starts(spec: PoolSpec) -> Iterator[tuple[int, int]]:
    """(shard, first image id) for each shard: image ids are contiguous from 0 across shards."""
    first = 0
    for shard in range(spec.num_shards):
        yield shard, first
        first += int(_image_counts(spec, shard).shape[0])


def write_pool(
    out_dir: str | os.PathLike[str], spec: PoolSpec, *, validate: bool = True, skip_existing: bool = False
) -> list[Path]:
    """Generate ``spec``'s pool and write it as ``spec.num_shards`` shards, one at a time.

    Layout: ``out_dir/shard-00000/``, ``shard-00001/``, ... each a taudis.data.instances shard.

    Args:
        out_dir: the pool directory.
        spec: what to generate.
        validate: validate each shard before writing it.
        skip_existing: keep a shard directory that already exists (a shard is written atomically,
            so an existing one is complete); used to cache benchmark pools.
    """
    if spec.num_instances < 0 or spec.num_shards < 1:
        raise ValueError(f"need num_instances >= 0 and num_shards >= 1, got {spec}")
    out = Path(out_dir)
    paths = []
    for shard, first in iter_shard_starts(spec):
        path = out / shard_name(shard)
        if not (skip_existing and path.is_dir()):
            write_shard(path, **shard_columns(spec, shard, first), validate=validate)
        paths.append(path)
    return paths
