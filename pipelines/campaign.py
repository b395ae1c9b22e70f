"""The campaign pipeline: K active-learning rounds unrolled at compile time, labels from an oracle.

For simulation and benchmarks on a fully labelled dataset: each round trains on what is labelled,
evaluates on the val split (a Metrics artifact per round), predicts the rest of the pool, selects
a batch with the compiled-in strategy, and the oracle reveals that batch's ground truth at the
start of the next round. A last train-and-evaluate closes the learning curve.
"""

from kfp import dsl

from components import check_parameters, evaluate_model, export_for_labeling, reveal_oracle_labels, train_model
from pipelines.common import choose_images, infer_pool, no_cache
from pipelines.platform import on_gpu


def build_campaign_pipeline(
    strategy: str = "taudis", *, rounds: int = 3, num_shards: int = 1, target: str = "kubernetes"
):
    """The campaign pipeline: ``rounds`` selections with ``strategy``, then a final evaluation."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")

    @dsl.pipeline(
        name=f"taudis-campaign-{strategy}",
        description=f"{rounds} simulated active-learning rounds ({strategy}) with oracle labels.",
    )
    def campaign_pipeline(
        campaign_uri: str,
        pool_annotations: str,
        image_root: str,
        val_annotations: str,
        labelled_annotations: str = "",
        config: str = "mask_rcnn_R18_slim_cpu.yaml",
        train_opts: str = "",
        weights: str = "",
        budget: int = 10,
        alpha: float = 2.5,
        beta: float = 1.5,
        sigma: float = 0.8,
        metric: str = "seg_entropy",
        aggregation: str = "mean",
        seed: int = 0,
    ):
        previous = check_parameters(
            strategy=strategy,
            budget=budget,
            alpha=alpha,
            beta=beta,
            sigma=sigma,
            metric=metric,
            aggregation=aggregation,
            pool_annotations=pool_annotations,
            labelled_annotations=labelled_annotations,
            val_annotations=val_annotations,
        ).set_display_name("check parameters")
        for round_index in range(rounds + 1):
            label = f"round {round_index}: "
            prepare = no_cache(
                reveal_oracle_labels(
                    campaign_uri=campaign_uri,
                    pool_annotations=pool_annotations,
                    labelled_annotations=labelled_annotations,
                ).after(previous)
            ).set_display_name(f"{label}oracle labels")
            train = train_model(
                labelled=prepare.outputs["labelled"],
                image_root=image_root,
                config=config,
                train_opts=train_opts,
                seed=seed,
                weights=weights,
            ).set_display_name(f"{label}train")
            on_gpu(train, target)
            evaluate = no_cache(
                evaluate_model(
                    model=train.outputs["model"],
                    labelled=prepare.outputs["labelled"],
                    val_annotations=val_annotations,
                    image_root=image_root,
                    campaign_uri=campaign_uri,
                    round_index=prepare.outputs["Output"],
                )
            ).set_display_name(f"{label}evaluate")
            on_gpu(evaluate, target)
            if round_index == rounds:
                break
            shards = infer_pool(
                train.outputs["model"],
                prepare.outputs["unlabelled"],
                image_root,
                num_shards=num_shards,
                target=target,
                label=label,
            )
            selection = choose_images(
                strategy,
                shards,
                budget=budget,
                alpha=alpha,
                beta=beta,
                sigma=sigma,
                metric=metric,
                aggregation=aggregation,
                seed=seed,
                label=label,
            )
            previous = no_cache(
                export_for_labeling(
                    selection=selection,
                    instances=dsl.Collected(shards),
                    model=train.outputs["model"],
                    campaign_uri=campaign_uri,
                    pool_annotations=pool_annotations,
                    image_root=image_root,
                    round_index=prepare.outputs["Output"],
                ).after(evaluate)
            ).set_display_name(f"{label}export for labelling")

    return campaign_pipeline
