"""Pieces both pipelines share: the pool inference fan-out and the selection step."""

from __future__ import annotations

from kfp import dsl

from components import (
    infer_instances,
    oversample_instances,
    score_uncertainty,
    select_baseline,
    select_max_k_cover,
    vote_images,
)
from pipelines.platform import on_gpu

# The parameters every run takes, with their defaults (the pipeline functions repeat them
# because KFP reads a pipeline's inputs from its Python signature).
DEFAULTS = {
    "budget": 10,
    "alpha": 2.5,
    "beta": 1.5,
    "sigma": 0.8,
    "metric": "seg_entropy",
    "aggregation": "mean",
    "seed": 0,
}


def no_cache(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Steps that read or write the campaign's bucket state: KFP's cache keys on inputs, not on bucket content."""
    return task.set_caching_options(False)


def infer_pool(model, unlabelled, image_root, *, num_shards: int, target: str, label: str):
    """Predict the unlabelled pool in ``num_shards`` parallel tasks.

    Returns the loop's per-shard output; each consumer wraps it in its own ``dsl.Collected``
    (KFP 2.17 fails to compile one Collected object shared by several consumers).
    """
    with dsl.ParallelFor(list(range(num_shards)), parallelism=num_shards) as shard:
        task = infer_instances(
            model=model, unlabelled=unlabelled, image_root=image_root, shard=shard, num_shards=num_shards
        ).set_display_name(f"{label}infer shard")
        on_gpu(task, target)
    return task.outputs["instances"]


def choose_images(strategy: str, shards, *, budget, alpha, beta, sigma, metric, aggregation, seed, label: str):
    """The selection step: TAUDIS as four components, a baseline as one; returns the selection artifact."""
    if strategy != "taudis":
        return (
            select_baseline(
                instances=dsl.Collected(shards),
                strategy=strategy,
                budget=budget,
                metric=metric,
                aggregation=aggregation,
                seed=seed,
            )
            .set_display_name(f"{label}select ({strategy})")
            .outputs["selection"]
        )
    scores = score_uncertainty(instances=dsl.Collected(shards)).set_display_name(f"{label}score uncertainty")
    candidates = oversample_instances(
        scores=scores.outputs["scores"], budget=budget, alpha=alpha, metric=metric
    ).set_display_name(f"{label}oversample")
    cover = select_max_k_cover(
        instances=dsl.Collected(shards),
        candidates=candidates.outputs["candidates"],
        budget=budget,
        beta=beta,
        sigma=sigma,
    ).set_display_name(f"{label}max k-cover")
    vote = vote_images(
        scores=scores.outputs["scores"], cover=cover.outputs["cover"], budget=budget, aggregation=aggregation
    ).set_display_name(f"{label}vote")
    return vote.outputs["selection"]
