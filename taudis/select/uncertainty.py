"""Instance uncertainty (TAUDIS step 0) and its aggregation to images.

Every metric is a function of one instance's predictions and is larger for a more uncertain
instance. Metric names live in one registry, :data:`METRICS`:

- ``margin``: classification margin ``CM = 1 - (p[top1] - p[top2])`` over all K+1 probabilities
  (background included), in [0, 1].
- ``entropy``: classification entropy ``CE = -sum_k p[k] log p[k]`` (natural log), in [0, log(K+1)].
- ``entropy_norm``: ``CE / log(K+1)``, in [0, 1].
- ``seg_entropy``: segmentation entropy ``SE``, the mean over **all S x S pixels of the mask head's
  output** (the box-relative mask probability map, for the predicted class; pixels outside the
  object count too, and are near-certain background) of the binary entropy
  ``H(m) = -m log m - (1-m) log(1-m)``, natural log, so in [0, log 2].
- ``seg_entropy_bits``: ``SE / log 2``, in [0, 1].
- Combinations of the three base metrics ``margin``, ``entropy`` and ``seg_entropy``, each first
  normalised over every instance of the shards read (excluded images included, so that the
  numbers do not depend on which images are excluded):
  ``mean_minmax`` / ``product_minmax`` (min-max normalised to [0, 1]; a constant metric
  normalises to 0) and ``mean_rank`` / ``product_rank`` (rank normalised: the fraction of
  instances with a strictly smaller value, so ties share a rank). A base metric that is constant
  over those instances (one-hot class probabilities, saturated masks) tells none apart: a
  product leaves it out, rather than multiplying every instance by its 0.

The default metric is ``product_rank``, chosen by the active-learning benchmark
(docs/benchmark.md): on both of its datasets, three seeds each, every strategy from the same
round-0 model, TAUDIS with it was at or above TAUDIS with ``seg_entropy`` (the paper's metric
for instance segmentation) at every round, by 0.1 to 3.2 mask AP.

Image-level uncertainty aggregates an image's instances with ``mean``, ``max`` or ``sum``
(:data:`AGGREGATIONS`); an image with no instance has uncertainty 0.

Scoring streams over the shards in row chunks (:func:`score_pool`), so the pool's masks are never
all in memory at once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from taudis.data.instances import InstanceShard, InstanceTableError, iter_shards

DEFAULT_METRIC = "product_rank"
BASE_METRICS = ("margin", "entropy", "seg_entropy")
COMBINATIONS = ("mean_minmax", "product_minmax", "mean_rank", "product_rank")
# Every metric name, in one place; everything else validates against this tuple.
METRICS = ("margin", "entropy", "entropy_norm", "seg_entropy", "seg_entropy_bits", *COMBINATIONS)
AGGREGATIONS = ("mean", "max", "sum")
# Metrics that are another metric times a positive constant: they order instances and images
# exactly as that metric does, so every selection made with them is the same.
RESCALINGS = {"entropy_norm": "entropy", "seg_entropy_bits": "seg_entropy"}
# Rows scored at a time: bounds the memory of one chunk of float16 masks (8192 x 28 x 28 x 2 B = 13 MB).
CHUNK_ROWS = 8192


def check_metric(metric: str) -> None:
    """Raise ValueError unless ``metric`` is a registered metric name."""
    if metric not in METRICS:
        raise ValueError(f"unknown uncertainty metric {metric!r}; known: {', '.join(METRICS)}")


def check_aggregation(aggregation: str) -> None:
    """Raise ValueError unless ``aggregation`` is one of :data:`AGGREGATIONS`."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown image aggregation {aggregation!r}; known: {', '.join(AGGREGATIONS)}")


# ---------------------------------------------------------------- per-instance formulas


def classification_margin(probs: np.ndarray) -> np.ndarray:
    """``1 - (p[top1] - p[top2])`` per row of an (N, K+1) probability array."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[0] == 0:
        return np.zeros(0)
    if p.shape[1] < 2:
        return np.zeros(p.shape[0])
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def classification_entropy(probs: np.ndarray, *, normalise: bool = False) -> np.ndarray:
    """``-sum_k p[k] log p[k]`` per row (0 log 0 = 0); with ``normalise``, divided by log(K+1)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    out = terms.sum(axis=1)
    if normalise and p.shape[1] > 1:
        out = out / math.log(p.shape[1])
    return out


def _binary_entropy(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(m > 0, -m * np.log(np.where(m > 0, m, 1.0)), 0.0)
        b = np.where(m < 1, -(1 - m) * np.log(np.where(m < 1, 1 - m, 1.0)), 0.0)
    return a + b


# Binary entropy of every float16 value, indexed by its bit pattern: float16 masks are scored by
# table look-up, exactly (the table is computed in float64). Values outside [0, 1] and NaN map to NaN.
def _float16_entropy_table() -> np.ndarray:
    values = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    table = np.full(values.shape, np.nan)
    ok = (values >= 0) & (values <= 1)
    table[ok] = _binary_entropy(values[ok])
    return table


_F16_TABLE = _float16_entropy_table()


@numba.njit(cache=True, nogil=True)
def _mean_table_entropy(bits: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    n, p = bits.shape
    for i in range(n):
        s = 0.0
        for j in range(p):
            s += table[bits[i, j]]
        out[i] = s / p


def segmentation_entropy(masks: np.ndarray, *, bits: bool = False) -> np.ndarray:
    """Mean binary entropy over all S x S pixels of each mask, natural log (``bits``: / log 2).

    Args:
        masks: (N, S, S) mask probabilities in [0, 1], float16 or float32/64.
        bits: divide by log 2 so the result lies in [0, 1].

    Returns:
        float64 (N,); NaN for a mask with a value outside [0, 1] (callers report it).
    """
    m = np.asarray(masks)
    n = m.shape[0]
    if n == 0:
        return np.zeros(0)
    flat = m.reshape(n, -1)
    if flat.shape[1] == 0:
        return np.zeros(n)
    out = np.empty(n)
    if flat.dtype == np.float16:
        _mean_table_entropy(np.ascontiguousarray(flat).view(np.uint16), _F16_TABLE, out)
    else:
        h = _binary_entropy(flat)
        h[(flat < 0) | (flat > 1) | ~np.isfinite(flat)] = np.nan
        out[:] = h.mean(axis=1)
    return out / math.log(2) if bits else out


# ---------------------------------------------------------------- normalisation and combinations


def minmax_normalise(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant (or empty) array maps to zeros."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def rank_normalise(x: np.ndarray) -> np.ndarray:
    """Fraction of the other values strictly below each value, in [0, 1]; ties share a rank."""
    x = np.asarray(x, dtype=np.float64)
    if x.size <= 1:
        return np.zeros_like(x)
    below = np.searchsorted(np.sort(x), x, side="left")
    return below / (x.size - 1)


def combine(base: dict[str, np.ndarray], name: str) -> np.ndarray:
    """One combination metric from the three base metrics (see the module docstring)."""
    how, _, norm = name.partition("_")
    normalise = minmax_normalise if norm == "minmax" else rank_normalise
    parts = [normalise(base[m]) for m in BASE_METRICS]
    if not parts[0].size:
        return np.zeros(0)
    if how == "mean":
        return np.mean(parts, axis=0)
    telling = [part for m, part in zip(BASE_METRICS, parts, strict=True) if np.ptp(base[m]) > 0]
    return np.prod(telling, axis=0) if telling else np.zeros_like(parts[0])


def derive_metrics(base: dict[str, np.ndarray], metrics: Sequence[str], num_classes: int) -> dict[str, np.ndarray]:
    """Every requested metric from the base ones (``num_classes`` = K+1, for ``entropy_norm``)."""
    out: dict[str, np.ndarray] = {}
    for name in metrics:
        check_metric(name)
        if name in BASE_METRICS:
            out[name] = base[name]
        elif name == "entropy_norm":
            out[name] = base["entropy"] / math.log(num_classes) if num_classes > 1 else np.zeros_like(base["entropy"])
        elif name == "seg_entropy_bits":
            out[name] = base["seg_entropy"] / math.log(2)
        else:
            out[name] = combine(base, name)
    return out


# ---------------------------------------------------------------- streaming over a pool


@dataclass
class PoolScores:
    """Per-instance uncertainty of every instance in a pool's shards, plus the pool's images.

    Instances are numbered globally in shard-name order, then row order (``shard_offsets[s]`` is
    the global index of shard ``s``'s first row).
    """

    shard_paths: list[Path]
    shard_offsets: np.ndarray  # int64 (S+1,)
    image_ids: np.ndarray  # int64 (M,), every image in the shards, sorted
    instance_image: np.ndarray  # int64 (N,)
    instance_index: np.ndarray  # int64 (N,)
    num_classes: int  # K+1
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float64 (N,)

    @property
    def num_instances(self) -> int:
        return int(self.instance_image.shape[0])


def _score_shard(shard: InstanceShard, chunk_rows: int) -> dict[str, np.ndarray]:
    n = shard.num_instances
    base = {m: np.empty(n) for m in BASE_METRICS}
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        probs = np.asarray(shard.class_probs[start:stop])
        base["margin"][start:stop] = classification_margin(probs)
        base["entropy"][start:stop] = classification_entropy(probs)
        se = segmentation_entropy(shard.mask_probs[start:stop])
        if np.isnan(se).any():
            row = start + int(np.flatnonzero(np.isnan(se))[0])
            raise InstanceTableError(shard.path, "mask probability outside [0, 1] or NaN", row=row, field="mask_probs")
        base["seg_entropy"][start:stop] = se
    return base


def score_pool(
    instances: str | os.PathLike[str],
    metrics: Sequence[str] = (DEFAULT_METRIC,),
    *,
    chunk_rows: int = CHUNK_ROWS,
    validate: bool = True,
) -> PoolScores:
    """Score every instance of every shard under ``instances``, streaming in row chunks.

    Args:
        instances: a shard directory or a directory of shards (taudis.data.instances).
        metrics: metric names to keep (the base metrics are always computed; they are cheap next
            to reading the masks).
        chunk_rows: rows read at a time.
        validate: validate each shard against the contract on read.

    Raises:
        InstanceTableError: a shard breaks the contract, or two shards list the same image.
        ValueError: an unknown metric name.
    """
    for name in metrics:
        check_metric(name)
    paths: list[Path] = []
    offsets = [0]
    image_parts: list[np.ndarray] = []
    inst_image: list[np.ndarray] = []
    inst_index: list[np.ndarray] = []
    base_parts: dict[str, list[np.ndarray]] = {m: [] for m in BASE_METRICS}
    num_classes = 0
    owner: dict[int, Path] = {}
    for shard in iter_shards(instances, validate=validate):
        num_classes = len(shard.class_names) + 1
        ids = np.asarray(shard.image_ids, dtype=np.int64)
        _check_disjoint(owner, ids, shard.path)
        paths.append(shard.path)
        offsets.append(offsets[-1] + shard.num_instances)
        image_parts.append(ids)
        inst_image.append(np.asarray(shard.instance_image, dtype=np.int64))
        inst_index.append(np.asarray(shard.instance_index, dtype=np.int64))
        for name, values in _score_shard(shard, chunk_rows).items():
            base_parts[name].append(values)
        del shard  # unmap the shard's columns before opening the next
    base = {m: np.concatenate(v) if v else np.zeros(0) for m, v in base_parts.items()}
    return PoolScores(
        shard_paths=paths,
        shard_offsets=np.asarray(offsets, dtype=np.int64),
        image_ids=np.sort(np.concatenate(image_parts)) if image_parts else np.zeros(0, np.int64),
        instance_image=np.concatenate(inst_image) if inst_image else np.zeros(0, np.int64),
        instance_index=np.concatenate(inst_index) if inst_index else np.zeros(0, np.int64),
        num_classes=num_classes,
        metrics=derive_metrics(base, metrics, num_classes),
    )


def _check_disjoint(owner: dict[int, Path], ids: np.ndarray, path: Path) -> None:
    # Shards partition the pool's images; an image in two shards would count its instances twice.
    for row, image in enumerate(ids.tolist()):
        if image in owner:
            raise InstanceTableError(
                path, f"image id {image} is also listed by shard {owner[image]}", row=row, field="image_ids"
            )
        owner[image] = path


# ---------------------------------------------------------------- image aggregation


def aggregate_images(
    image_ids: np.ndarray, instance_image: np.ndarray, uncertainty: np.ndarray, aggregation: str
) -> np.ndarray:
    """Image-level uncertainty for each of ``image_ids`` (sorted); 0 for an image with no instance.

    Instances whose image is not in ``image_ids`` are ignored.
    """
    check_aggregation(aggregation)
    image_ids = np.asarray(image_ids, dtype=np.int64)
    out = np.zeros(image_ids.shape[0])
    if image_ids.size == 0 or instance_image.size == 0:
        return out
    pos = np.searchsorted(image_ids, instance_image)
    pos_c = np.minimum(pos, image_ids.size - 1)
    keep = image_ids[pos_c] == instance_image
    pos_k, u = pos_c[keep], np.asarray(uncertainty, dtype=np.float64)[keep]
    if aggregation == "max":
        np.maximum.at(out, pos_k, u)  # uncertainties are >= 0, so 0 is a neutral start
        return out
    sums = np.bincount(pos_k, weights=u, minlength=image_ids.size)
    if aggregation == "sum":
        return sums
    counts = np.bincount(pos_k, minlength=image_ids.size)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)


def instance_counts(image_ids: np.ndarray, instance_image: np.ndarray) -> np.ndarray:
    """Number of instances of each of ``image_ids`` (sorted)."""
    if image_ids.size == 0:
        return np.zeros(0, np.int64)
    pos = np.searchsorted(image_ids, instance_image)
    pos_c = np.minimum(pos, image_ids.size - 1)
    keep = image_ids[pos_c] == instance_image
    return np.bincount(pos_c[keep], minlength=image_ids.size)
