"""`select`: the one entry point for every selection strategy, all returning a Selection.

Strategies (:data:`taudis.select.pool.STRATEGIES`):

- ``taudis``: score instances (``metric``), keep the top ceil(alpha*B) pool instances
  (ties: lower global index), greedy max k-cover of ceil(beta*B) of them on the graph
  cos >= sigma, majority vote to B images with a fill (see :mod:`taudis.select.vote`).
- ``random``: B pool images uniformly at random (``seed``).
- ``uncertainty``: the B images of highest image-level uncertainty (``metric`` aggregated with
  ``aggregation``; images without instances last).
- ``coreset``: greedy k-center on image embeddings (mean of the image's instance embeddings,
  renormalised), starting from the labelled images as centers when their shards are given
  (Sener and Savarese 2018); see :func:`taudis.select.baselines.coreset_images`.
- ``diversity``: max k-cover of ceil(beta*B) instances among *all* pool instances (no uncertainty
  step; uncertainty still breaks ties), then the same vote. Its graph is over every pool
  instance, so its cost grows with the square of the pool's instances.

The steps of ``taudis`` are plain functions (:func:`oversample_step`, :func:`cover_step`,
:func:`vote_step`) shared with the file-based stages in :mod:`taudis.select.stages`, so the two
give the same Selection.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taudis.data.instances import InstanceTableError, read_shard
from taudis.select.baselines import coreset_images, image_embeddings, random_images, uncertainty_images
from taudis.select.cover import CoverResult, cover_embeddings, greedy_cover_bipartite
from taudis.select.graph import bipartite_graph
from taudis.select.pool import (
    UNIVERSES,
    Pool,
    budget_notes,
    check_params,
    gather_embeddings,
    image_uncertainty,
    make_pool,
    scaled_budget,
)
from taudis.select.selection import ChosenInstance, SelectedImage, Selection
from taudis.select.space import Whitening, pool_whitening
from taudis.select.uncertainty import DEFAULT_METRIC, PoolScores, score_pool
from taudis.select.vote import vote


def make_params(
    alpha: float,
    beta: float,
    sigma: float,
    metric: str,
    aggregation: str,
    seed: int,
    *,
    universe: str = "candidates",
    centre: bool = False,
    whiten: bool = False,
) -> dict[str, Any]:
    """The ``params`` object of a Selection: every parameter the strategy was run with."""
    return {
        "alpha": float(alpha),
        "beta": float(beta),
        "sigma": float(sigma),
        "metric": metric,
        "aggregation": aggregation,
        "seed": int(seed),
        "universe": universe,
        "centre": bool(centre),
        "whiten": bool(whiten),
    }


@dataclass(frozen=True)
class Candidates:
    """Step 1's output: the oversampled instances, most uncertain first."""

    indices: np.ndarray  # int64 (C,), global instance indices
    uncertainty: np.ndarray  # float64 (C,)
    notes: list[str]


def oversample_step(uncertainty: np.ndarray, eligible: np.ndarray, budget: int, alpha: float) -> Candidates:
    """Top ceil(alpha * budget) eligible instances by uncertainty (ties: lower global index).

    ``budget`` is the effective budget (already capped at the pool's images).
    """
    want = scaled_budget(alpha, budget)
    idx = np.flatnonzero(eligible)
    u = np.asarray(uncertainty, dtype=np.float64)
    top = idx[np.lexsort((idx, -u[idx]))[:want]]
    notes = []
    if idx.size < want:
        notes.append(f"the pool has {idx.size} instances, fewer than ceil(alpha*B) = {want}: all are candidates")
    return Candidates(indices=top.astype(np.int64), uncertainty=u[top], notes=notes)


def cover_step(
    candidate_embeddings: np.ndarray,
    candidate_uncertainty: np.ndarray,
    budget: int,
    beta: float,
    sigma: float,
    *,
    universe: str = "candidates",
    pool_embeddings: np.ndarray | None = None,
    candidate_pool_rows: np.ndarray | None = None,
    partitions: int = 1,
    seed: int = 0,
    centre: bool = False,
    whitening: Whitening | None = None,
) -> CoverResult:
    """Greedy max k-cover of k = ceil(beta * budget) candidates (indices into the candidates).

    With ``universe="pool"``, ``pool_embeddings`` are every pool instance's embeddings and
    ``candidate_pool_rows`` each candidate's row among them. With ``partitions`` > 1 the cover is
    GreeDi over that many random parts (``seed``), for candidate sets whose graph does not fit
    one worker (taudis.select.cover.cover_embeddings). With ``centre``, the embeddings are
    centred on the mean of the universe's embeddings before the cosine graph is built: mask-head
    embeddings are post-ReLU (no negative entry), so raw cosines crowd near 1 and a fixed sigma
    links most pairs; centred, a cosine measures how alike two instances are relative to the rest.
    A ``whitening`` (the pool's: taudis.select.space) is applied to every embedding instead; it
    centres too, so ``centre`` then adds nothing.
    """
    check_cover_options(universe, partitions)
    k = scaled_budget(beta, budget)
    candidate_embeddings, pool_embeddings = cover_space(
        candidate_embeddings, pool_embeddings, universe=universe, centre=centre, whitening=whitening
    )
    if universe == "candidates":
        return cover_embeddings(candidate_embeddings, candidate_uncertainty, k, sigma, partitions=partitions, seed=seed)
    if pool_embeddings is None or candidate_pool_rows is None:
        raise ValueError("universe 'pool' needs the pool's embeddings and each candidate's row among them")
    graph = bipartite_graph(candidate_embeddings, pool_embeddings, sigma, self_cols=candidate_pool_rows)
    return greedy_cover_bipartite(graph, candidate_pool_rows, candidate_uncertainty, k)


def cover_space(
    candidate_embeddings: np.ndarray,
    pool_embeddings: np.ndarray | None,
    *,
    universe: str = "candidates",
    centre: bool = False,
    whitening: Whitening | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The candidates' and the pool's embeddings as the cover's cosine graph sees them: whitened
    (``whitening``), centred on the universe's mean (``centre``), or as they are (cover_step)."""
    if whitening is not None:
        pool = None if pool_embeddings is None else whitening.apply(pool_embeddings)
        return whitening.apply(candidate_embeddings), pool
    if not centre:
        return candidate_embeddings, pool_embeddings
    whole = pool_embeddings if universe == "pool" and pool_embeddings is not None else candidate_embeddings
    mean = whole.mean(axis=0, keepdims=True)
    return candidate_embeddings - mean, None if pool_embeddings is None else pool_embeddings - mean


def check_cover_options(universe: str, partitions: int) -> None:
    """Reject an unknown universe, or GreeDi partitions where they do not apply."""
    if universe not in UNIVERSES:
        raise ValueError(f"unknown cover universe {universe!r}; known: {', '.join(UNIVERSES)}")
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"partitions must be a positive integer, got {partitions!r}")
    if partitions > 1 and universe != "candidates":
        raise ValueError("GreeDi partitions apply to the 'candidates' universe only")


def cover_notes(result: CoverResult, num_candidates: int, universe: str, partitions: int = 1) -> list[str]:
    how = "max k-cover" if partitions == 1 else f"max k-cover by GreeDi over {partitions} partitions"
    return [
        f"{how} chose {result.chosen.size} of {num_candidates} candidates, covering "
        f"{result.covered} of {result.universe} {universe} ({result.coverage:.4f})"
    ]


def vote_step(
    *,
    strategy: str,
    params: dict[str, Any],
    budget: int,
    pool: Pool,
    instance_image: np.ndarray,
    instance_index: np.ndarray,
    uncertainty: np.ndarray,
    chosen: np.ndarray,
    num_candidates: int,
    coverage: float | None,
    notes: list[str],
) -> Selection:
    """Majority vote of the chosen instances (global indices, choice order) into a Selection."""
    metric, aggregation = params["metric"], params["aggregation"]
    img_u = image_uncertainty(pool, instance_image, uncertainty, aggregation)
    images, filled, vote_notes = vote(
        pool.image_ids,
        img_u,
        pool.instance_counts,
        instance_image[chosen],
        uncertainty[chosen],
        min(budget, pool.num_images),
        aggregation=aggregation,
        metric=metric,
    )
    instances = [
        ChosenInstance(int(instance_image[c]), int(instance_index[c]), float(uncertainty[c])) for c in chosen.tolist()
    ]
    return _finish(
        strategy, params, budget, pool, images, instances, notes + vote_notes, num_candidates, filled, coverage
    )


def _finish(
    strategy: str,
    params: dict[str, Any],
    budget: int,
    pool: Pool,
    images: list[SelectedImage],
    instances: list[ChosenInstance],
    notes: list[str],
    num_candidates: int,
    filled: int,
    coverage: float | None,
) -> Selection:
    stats = {
        "pool_images": pool.num_images,
        "pool_instances": pool.num_instances,
        "candidates": int(num_candidates),
        "chosen_instances": len(instances),
        "filled": int(filled),
        "coverage": coverage,
    }
    return Selection(strategy, params, int(budget), images, instances, notes, stats)


def select(
    instances: str | os.PathLike[str],
    budget: int,
    strategy: str = "taudis",
    *,
    alpha: float = 2.5,
    beta: float = 1.5,
    sigma: float = 0.8,
    metric: str = DEFAULT_METRIC,
    aggregation: str = "mean",
    seed: int = 0,
    exclude: Collection[int] = (),
    universe: str = "candidates",
    partitions: int = 1,
    centre: bool = False,
    whiten: bool = False,
    labelled: str | os.PathLike[str] | None = None,
) -> Selection:
    """Choose ``budget`` images to label next from the instance shards under ``instances``.

    The pool is every image id in the shards (images without instances included) minus
    ``exclude``. A budget above the pool's size selects the whole pool (said in the notes). The
    same inputs and seed give a byte-identical ``Selection.to_json()``.

    Args:
        instances: a shard directory or a directory of shards (taudis.data.instances).
        budget: B, the number of images to select (> 0).
        strategy: one of taudis, random, uncertainty, coreset, diversity (module docstring).
        alpha: oversampling factor, candidates = ceil(alpha * B); alpha >= beta.
        beta: instances chosen by the cover = ceil(beta * B); beta >= 1.
        sigma: cosine similarity threshold of the graph, in [-1, 1].
        metric: instance uncertainty metric (taudis.select.uncertainty.METRICS); the default,
            ``product_rank``, is the benchmark's choice (taudis.select.uncertainty).
        aggregation: image-level aggregation (mean, max, sum) for the fill, the uncertainty
            baseline and the report.
        seed: random seed (random and coreset strategies; recorded for all).
        exclude: image ids left out of the pool (e.g. already labelled or pending).
        universe: what the cover must cover, ``candidates`` (default) or ``pool``
            (taudis.select.cover).
        partitions: 1 (default) for the exact single-worker greedy; more for GreeDi over that
            many random parts (seeded by ``seed``), for candidate sets too big for one graph.
        centre: centre the embeddings on their mean before the cover's cosine graph (cover_step).
        whiten: whiten the embeddings on the pool's statistics before the cover's cosine graph
            (taudis.select.space; it centres too).
        labelled: coreset only: instance shards of the labelled images, whose embeddings are
            the first centers (without them, the first center is a random pool image).

    Raises:
        ValueError: an invalid parameter (checked before any work).
        taudis.data.instances.InstanceTableError: a shard breaks the contract.
    """
    check_params(budget, strategy, alpha, beta, sigma, metric, aggregation)
    check_cover_options(universe, partitions)
    params = make_params(alpha, beta, sigma, metric, aggregation, seed, universe=universe, centre=centre, whiten=whiten)
    scores = score_pool(instances, [metric])
    pool = make_pool(scores.image_ids, scores.instance_image, exclude)
    notes = budget_notes(budget, pool) + unread_notes(scores)
    if strategy in ("taudis", "diversity"):
        return _cover_and_vote(strategy, scores, pool, params, budget, notes, universe, partitions)
    u = scores.metrics[metric]
    img_u = image_uncertainty(pool, scores.instance_image, u, aggregation)
    b = min(budget, pool.num_images)
    if strategy == "random":
        images = random_images(pool.image_ids, img_u, b, seed)
    elif strategy == "uncertainty":
        images = uncertainty_images(pool.image_ids, img_u, pool.instance_counts, b, aggregation, metric)
    else:
        emb, has = image_embeddings(scores.shard_paths, pool.image_ids, pool.eligible, scores.shard_offsets)
        centers = labelled_centers(labelled, like=scores) if labelled is not None else None
        if centers is not None:
            notes = [*notes, f"k-center from {len(centers)} labelled images with an embedding as the first centers"]
        images = coreset_images(pool.image_ids, emb, has, img_u, b, seed, centers)
    filled = sum(im.filled for im in images)
    return _finish(strategy, params, budget, pool, images, [], notes, 0, filled, None)


def unread_notes(scores: PoolScores) -> list[str]:
    """A note naming the pool images inference could not read (its shards' ``failed_images``): they
    are in no shard, so nothing here can choose them, and the team should know."""
    failed = [f for path in scores.shard_paths for f in read_shard(path, validate=False).failed_images]
    if not failed:
        return []
    ids = ", ".join(str(f.get("image_id", f.get("file"))) for f in failed[:10]) + (" ..." if len(failed) > 10 else "")
    return [
        f"{len(failed)} pool image(s) could not be read at inference and were not candidates: {ids} "
        f"(the first: {failed[0].get('error', '')})"
    ]


def labelled_centers(labelled: str | os.PathLike[str], like: PoolScores | None = None) -> np.ndarray:
    """Image embeddings (float32, unit rows) of the labelled images that have a predicted instance.

    With ``like`` (the pool's scores), the labelled shards must come from the pool's model: another
    model's embeddings live in another space, and distances between the two mean nothing.
    """
    scores = score_pool(labelled, [DEFAULT_METRIC])
    if like is not None:
        _same_model(scores, like, labelled)
    every = np.ones(scores.instance_image.shape[0], bool)
    emb, has = image_embeddings(scores.shard_paths, scores.image_ids, every, scores.shard_offsets)
    return emb[has]


def _same_model(labelled: PoolScores, pool: PoolScores, where: str | os.PathLike[str]) -> None:
    labelled_shards = [read_shard(p, validate=False) for p in labelled.shard_paths]
    pool_shards = [read_shard(p, validate=False) for p in pool.shard_paths]
    ours = {shard.model_id for shard in labelled_shards} - {""}
    theirs = {shard.model_id for shard in pool_shards} - {""}
    if ours and theirs and ours != theirs:
        raise InstanceTableError(
            Path(where),
            f"the labelled images' shards were written by model {sorted(ours)}, the pool's by {sorted(theirs)}: "
            "core-set compares their embeddings, so both must come from one model",
            field="model_id",
        )
    widths = {shard.embeddings.shape[1] for shard in (*labelled_shards, *pool_shards) if shard.num_instances}
    if len(widths) > 1:
        raise InstanceTableError(
            Path(where),
            f"embedding widths {sorted(widths)} of the labelled and the pool's shards differ",
            field="embeddings",
        )


def _cover_and_vote(
    strategy: str,
    scores: PoolScores,
    pool: Pool,
    params: dict[str, Any],
    budget: int,
    notes: list[str],
    universe: str,
    partitions: int,
) -> Selection:
    u = scores.metrics[params["metric"]]
    b = min(budget, pool.num_images)
    if strategy == "taudis":
        cands = oversample_step(u, pool.eligible, b, params["alpha"])
    else:  # diversity: every pool instance is a candidate, in index order
        idx = np.flatnonzero(pool.eligible).astype(np.int64)
        cands = Candidates(indices=idx, uncertainty=u[idx], notes=[])
    notes = notes + cands.notes
    emb = gather_embeddings(scores.shard_paths, scores.shard_offsets, cands.indices)
    pool_emb = pool_rows = None
    all_rows = np.flatnonzero(pool.eligible)
    if universe == "pool":
        pool_emb = gather_embeddings(scores.shard_paths, scores.shard_offsets, all_rows)
        pool_rows = np.searchsorted(all_rows, cands.indices)
    whitening = pool_whitening(scores.shard_paths, scores.shard_offsets, all_rows) if params["whiten"] else None
    result = cover_step(
        emb,
        cands.uncertainty,
        b,
        params["beta"],
        params["sigma"],
        universe=universe,
        pool_embeddings=pool_emb,
        candidate_pool_rows=pool_rows,
        partitions=partitions,
        seed=params["seed"],
        centre=params["centre"],
        whitening=whitening,
    )
    notes = notes + cover_notes(result, cands.indices.size, universe, partitions)
    return vote_step(
        strategy=strategy,
        params=params,
        budget=budget,
        pool=pool,
        instance_image=scores.instance_image,
        instance_index=scores.instance_index,
        uncertainty=u,
        chosen=cands.indices[result.chosen],
        num_candidates=cands.indices.size,
        coverage=result.coverage,
        notes=notes,
    )
