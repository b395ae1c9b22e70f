"""The round both pipelines are made of: claim, labels in, train, evaluate, infer, select, export, commit.

A round claims its index in the campaign's ledger (taudis.campaign.rounds), brings labels in
(annotators' files, or the oracle's), and everything after is the same in the round pipeline
and in every round of the campaign pipeline, so it is built here once. Steps that read or write
the campaign's bucket state are never cached (KFP's cache keys on inputs, not on bucket
contents) and are retried with backoff; every step is idempotent under those retries. Steps that
need to know which run they belong to get the run's id from KFP (PIPELINE_JOB_ID_PLACEHOLDER).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from kfp import dsl

from taudis_kfp.components import (
    check_parameters,
    claim_round,
    close_round,
    commit_round,
    evaluate_model,
    export_tasks,
    infer_instances,
    oversample_instances,
    report_round,
    score_uncertainty,
    select_baseline,
    select_coreset,
    select_max_k_cover,
    train_model,
    vote_images,
)
from taudis_kfp.pipelines.platform import on_gpu

RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER
RETRIES = 3
# A failed storage call is retried inside the step; a step retried by KFP waits longer on a cluster.
BACKOFF = {"local": "1s", "kubernetes": "30s", "vertex": "30s"}


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
    finetune: Any
    budget: Any
    alpha: Any
    beta: Any
    sigma: Any
    metric: Any
    aggregation: Any
    universe: Any
    centre: Any
    whiten: Any
    seed: Any
    labelstudio_url_prefix: Any

    @classmethod
    def of(cls, scope: dict[str, Any]) -> RunInputs:
        """The run's parameters from a pipeline function's ``locals()`` (which also hold its closure)."""
        return cls(**{f.name: scope[f.name] for f in fields(cls)})


def stateful(task: dsl.PipelineTask, target: str) -> dsl.PipelineTask:
    """A step that reads or writes campaign state: never cached, retried with backoff."""
    return task.set_caching_options(False).set_retry(
        num_retries=RETRIES,
        backoff_duration=BACKOFF.get(target, "30s"),
        backoff_factor=2.0,
        backoff_max_duration="600s",
    )


def check(run: RunInputs, strategy: str, target: str) -> dsl.PipelineTask:
    """The first step: reject bad parameters and missing inputs before any training (never cached)."""
    return stateful(
        check_parameters(
            strategy=strategy,
            budget=run.budget,
            alpha=run.alpha,
            beta=run.beta,
            sigma=run.sigma,
            metric=run.metric,
            aggregation=run.aggregation,
            universe=run.universe,
            campaign_uri=run.campaign_uri,
            pool_annotations=run.pool_annotations,
            labelled_annotations=run.labelled_annotations,
            val_annotations=run.val_annotations,
        ),
        target,
    ).set_display_name("check parameters")


@dataclass(frozen=True)
class RoundStart:
    """The first two steps of a round: its claim (round index) and its labels (datasets)."""

    claim: dsl.PipelineTask
    labels: dsl.PipelineTask

    @property
    def index(self) -> Any:
        return self.claim.output


def begin_round(
    run: RunInputs, after: dsl.PipelineTask, labels_component: Any, *, oracle: bool, target: str, label: str
) -> RoundStart:
    """Claim the next round (after ``after``), then bring its labels in with ``labels_component``."""
    claim = stateful(
        claim_round(
            campaign_uri=run.campaign_uri,
            pool_annotations=run.pool_annotations,
            labelled_annotations=run.labelled_annotations,
            run_id=RUN_ID,
        ).after(after),
        target,
    ).set_display_name(f"{label}claim round")
    labels = stateful(
        labels_component(
            campaign_uri=run.campaign_uri,
            pool_annotations=run.pool_annotations,
            round_index=claim.output,
            run_id=RUN_ID,
        ),
        target,
    ).set_display_name(f"{label}{'oracle labels' if oracle else 'ingest labels'}")
    return RoundStart(claim, labels)


def train_and_evaluate(
    run: RunInputs, start: RoundStart, *, target: str, label: str
) -> tuple[dsl.PipelineTask, dsl.PipelineTask]:
    """Train on the labelled set, then evaluate on the val split (Metrics, and the round's record)."""
    train = stateful(
        train_model(
            labelled=start.labels.outputs["labelled"],
            image_root=run.image_root,
            config=run.config,
            train_opts=run.train_opts,
            seed=run.seed,
            weights=run.weights,
            campaign_uri=run.campaign_uri,
            round_index=start.index,
            finetune=run.finetune,
        ),
        target,
    ).set_display_name(f"{label}train")
    on_gpu(train, target)
    evaluate = stateful(
        evaluate_model(
            model=train.outputs["model"],
            labelled=start.labels.outputs["labelled"],
            val_annotations=run.val_annotations,
            image_root=run.image_root,
            campaign_uri=run.campaign_uri,
            round_index=start.index,
            run_id=RUN_ID,
        ),
        target,
    ).set_display_name(f"{label}evaluate")
    on_gpu(evaluate, target)
    return train, evaluate


def select_and_commit(
    run: RunInputs,
    start: RoundStart,
    train: dsl.PipelineTask,
    evaluate: dsl.PipelineTask,
    *,
    strategy: str,
    num_shards: int,
    target: str,
    label: str,
) -> dsl.PipelineTask:
    """Infer the unlabelled pool in shards, select with ``strategy``, export tasks, report, commit the round."""
    shards = infer_pool(run, start, train, num_shards=num_shards, target=target, label=label)
    selection = choose_images(run, strategy, shards, start, train, target=target, label=label)
    tasks = stateful(
        export_tasks(
            selection=selection,
            instances=dsl.Collected(shards),
            pool_annotations=run.pool_annotations,
            image_root=run.image_root,
            labelstudio_url_prefix=run.labelstudio_url_prefix,
        ),
        target,
    ).set_display_name(f"{label}export tasks")
    report = stateful(
        report_round(
            selection=selection,
            instances=dsl.Collected(shards),
            campaign_uri=run.campaign_uri,
            pool_annotations=run.pool_annotations,
            image_root=run.image_root,
            round_index=start.index,
        ).after(evaluate),
        target,
    ).set_display_name(f"{label}report")
    return stateful(
        commit_round(
            selection=selection,
            tasks=tasks.outputs["tasks"],
            summary=report.outputs["summary"],
            report=report.outputs["report"],
            campaign_uri=run.campaign_uri,
            round_index=start.index,
            run_id=RUN_ID,
        ).after(evaluate),
        target,
    ).set_display_name(f"{label}commit round")


def end_round(
    run: RunInputs, start: RoundStart, evaluate: dsl.PipelineTask, *, target: str, label: str
) -> dsl.PipelineTask:
    """Close an evaluation-only round: its metrics are the learning curve's last point."""
    return stateful(
        close_round(campaign_uri=run.campaign_uri, round_index=start.index, run_id=RUN_ID).after(evaluate), target
    ).set_display_name(f"{label}close round")


def infer_pool(run: RunInputs, start: RoundStart, train, *, num_shards: int, target: str, label: str):
    """Predict the unlabelled pool in ``num_shards`` parallel tasks.

    Returns the loop's per-shard output; each consumer wraps it in its own ``dsl.Collected``
    (KFP 2.17 fails to compile one Collected object shared by several consumers).
    """
    with dsl.ParallelFor(list(range(num_shards)), parallelism=num_shards) as shard:
        task = stateful(
            infer_instances(
                model=train.outputs["model"],
                unlabelled=start.labels.outputs["unlabelled"],
                image_root=run.image_root,
                shard=shard,
                num_shards=num_shards,
            ),
            target,
        ).set_display_name(f"{label}infer shard")
        on_gpu(task, target)
    return task.outputs["instances"]


def choose_images(run: RunInputs, strategy: str, shards, start: RoundStart, train, *, target: str, label: str):
    """The selection: TAUDIS as four components, a baseline as one; returns the selection artifact."""
    if strategy == "coreset":
        # Core-set's first centers are the labelled images (Sener and Savarese 2018): embed them too.
        labelled = infer_instances(
            model=train.outputs["model"],
            unlabelled=start.labels.outputs["labelled"],
            image_root=run.image_root,
            shard=0,
            num_shards=1,
        ).set_display_name(f"{label}embed labelled images")
        on_gpu(stateful(labelled, target), target)
        return (
            select_coreset(
                instances=dsl.Collected(shards),
                labelled=labelled.outputs["instances"],
                budget=run.budget,
                metric=run.metric,
                aggregation=run.aggregation,
                seed=run.seed,
            )
            .set_display_name(f"{label}select (coreset)")
            .outputs["selection"]
        )
    if strategy != "taudis":
        return (
            select_baseline(
                instances=dsl.Collected(shards),
                strategy=strategy,
                budget=run.budget,
                alpha=run.alpha,
                beta=run.beta,
                sigma=run.sigma,
                metric=run.metric,
                aggregation=run.aggregation,
                seed=run.seed,
                universe=run.universe,
                centre=run.centre,
                whiten=run.whiten,
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
        universe=run.universe,
        centre=run.centre,
        whiten=run.whiten,
    ).set_display_name(f"{label}max k-cover")
    vote = vote_images(
        scores=scores.outputs["scores"],
        cover=cover.outputs["cover"],
        budget=run.budget,
        aggregation=run.aggregation,
        seed=run.seed,
    ).set_display_name(f"{label}vote")
    return vote.outputs["selection"]
