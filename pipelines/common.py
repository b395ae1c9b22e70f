"""The round both pipelines are made of: check, then train, evaluate, infer, select and export.

A round starts from a labelling step (ingest annotators' labels, or the oracle's) that yields the
labelled and unlabelled datasets and the round index; everything after it is the same in the
round pipeline and in every round of the campaign pipeline, so it is built here once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from kfp import dsl

from taudis_kfp.components import (
    check_parameters,
    evaluate_model,
    export_for_labeling,
    infer_instances,
    oversample_instances,
    score_uncertainty,
    select_baseline,
    select_max_k_cover,
    train_model,
    vote_images,
)
from taudis_kfp.pipelines.platform import on_gpu


@dataclass(frozen=True)
class RunInputs:
    """A pipeline run's parameters (KFP channels), as both pipeline functions declare them."""

    campaign_uri: Any
    pool_annotations: Any
    image_root: Any
    val_annotations: Any
    labelled_annotations: Any
    config: Any
    train_opts: Any
    weights: Any
    budget: Any
    alpha: Any
    beta: Any
    sigma: Any
    metric: Any
    aggregation: Any
    seed: Any

    @classmethod
    def of(cls, scope: dict[str, Any]) -> RunInputs:
        """The run's parameters from a pipeline function's ``locals()`` (which also hold its closure)."""
        return cls(**{f.name: scope[f.name] for f in fields(cls)})


def no_cache(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Steps that read or write the campaign's bucket state: KFP's cache keys on inputs, not on bucket content."""
    return task.set_caching_options(False)


def check(run: RunInputs, strategy: str) -> dsl.PipelineTask:
    """The first step: reject bad parameters and missing inputs before any training.

    Never cached: whether the input URIs exist is bucket state, which KFP's cache key does not see.
    """
    return no_cache(
        check_parameters(
            strategy=strategy,
            budget=run.budget,
            alpha=run.alpha,
            beta=run.beta,
            sigma=run.sigma,
            metric=run.metric,
            aggregation=run.aggregation,
            pool_annotations=run.pool_annotations,
            labelled_annotations=run.labelled_annotations,
            val_annotations=run.val_annotations,
        )
    ).set_display_name("check parameters")


def label_step(component, run: RunInputs, after: dsl.PipelineTask, label: str, name: str) -> dsl.PipelineTask:
    """The round's labelling step (ingest_labels or reveal_oracle_labels), never cached."""
    return no_cache(
        component(
            campaign_uri=run.campaign_uri,
            pool_annotations=run.pool_annotations,
            labelled_annotations=run.labelled_annotations,
        ).after(after)
    ).set_display_name(f"{label}{name}")


def train_and_evaluate(
    run: RunInputs, labels: dsl.PipelineTask, *, target: str, label: str
) -> tuple[dsl.PipelineTask, dsl.PipelineTask]:
    """Train on the labelled set, then evaluate on the val split (Metrics, and the campaign's record)."""
    train = train_model(
        labelled=labels.outputs["labelled"],
        image_root=run.image_root,
        config=run.config,
        train_opts=run.train_opts,
        seed=run.seed,
        weights=run.weights,
    ).set_display_name(f"{label}train")
    on_gpu(train, target)
    evaluate = no_cache(
        evaluate_model(
            model=train.outputs["model"],
            labelled=labels.outputs["labelled"],
            val_annotations=run.val_annotations,
            image_root=run.image_root,
            campaign_uri=run.campaign_uri,
            round_index=labels.outputs["Output"],
        )
    ).set_display_name(f"{label}evaluate")
    on_gpu(evaluate, target)
    return train, evaluate


def select_and_export(
    run: RunInputs,
    labels: dsl.PipelineTask,
    train: dsl.PipelineTask,
    evaluate: dsl.PipelineTask,
    *,
    strategy: str,
    num_shards: int,
    target: str,
    label: str,
) -> dsl.PipelineTask:
    """Infer the unlabelled pool in shards, select with ``strategy``, export tasks and report."""
    shards = infer_pool(run, labels, train, num_shards=num_shards, target=target, label=label)
    selection = choose_images(run, strategy, shards, label=label)
    return no_cache(
        export_for_labeling(
            selection=selection,
            instances=dsl.Collected(shards),
            model=train.outputs["model"],
            campaign_uri=run.campaign_uri,
            pool_annotations=run.pool_annotations,
            image_root=run.image_root,
            round_index=labels.outputs["Output"],
        ).after(evaluate)
    ).set_display_name(f"{label}export for labelling")


def infer_pool(run: RunInputs, labels, train, *, num_shards: int, target: str, label: str):
    """Predict the unlabelled pool in ``num_shards`` parallel tasks.

    Returns the loop's per-shard output; each consumer wraps it in its own ``dsl.Collected``
    (KFP 2.17 fails to compile one Collected object shared by several consumers).
    """
    with dsl.ParallelFor(list(range(num_shards)), parallelism=num_shards) as shard:
        task = infer_instances(
            model=train.outputs["model"],
            unlabelled=labels.outputs["unlabelled"],
            image_root=run.image_root,
            shard=shard,
            num_shards=num_shards,
        ).set_display_name(f"{label}infer shard")
        on_gpu(task, target)
    return task.outputs["instances"]


def choose_images(run: RunInputs, strategy: str, shards, *, label: str):
    """The selection: TAUDIS as four components, a baseline as one; returns the selection artifact."""
    if strategy != "taudis":
        return (
            select_baseline(
                instances=dsl.Collected(shards),
                strategy=strategy,
                budget=run.budget,
                metric=run.metric,
                aggregation=run.aggregation,
                seed=run.seed,
            )
            .set_display_name(f"{label}select ({strategy})")
            .outputs["selection"]
        )
    scores = score_uncertainty(instances=dsl.Collected(shards)).set_display_name(f"{label}score uncertainty")
    candidates = oversample_instances(
        scores=scores.outputs["scores"], budget=run.budget, alpha=run.alpha, metric=run.metric
    ).set_display_name(f"{label}oversample")
    cover = select_max_k_cover(
        instances=dsl.Collected(shards),
        candidates=candidates.outputs["candidates"],
        budget=run.budget,
        beta=run.beta,
        sigma=run.sigma,
    ).set_display_name(f"{label}max k-cover")
    vote = vote_images(
        scores=scores.outputs["scores"],
        cover=cover.outputs["cover"],
        budget=run.budget,
        aggregation=run.aggregation,
    ).set_display_name(f"{label}vote")
    return vote.outputs["selection"]
