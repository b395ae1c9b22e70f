"""The round pipeline: one active-learning round per run, for recurring runs on a schedule.

ingest finished labels -> train -> evaluate -> infer the unlabelled pool in shards -> select
(score, oversample, max k-cover, vote) -> export labelling tasks, mark them pending, report.
The strategy, the number of inference shards and the target platform are fixed when compiling.
"""

from kfp import dsl

from components import check_parameters, evaluate_model, export_for_labeling, ingest_labels, train_model
from pipelines.common import choose_images, infer_pool, no_cache
from pipelines.platform import on_gpu


def build_round_pipeline(strategy: str = "taudis", *, num_shards: int = 2, target: str = "kubernetes"):
    """The round pipeline for ``strategy``, inferring in ``num_shards`` parallel shards on ``target``."""

    @dsl.pipeline(
        name=f"taudis-round-{strategy}",
        description=f"One active-learning round ({strategy}): train, infer, select images to label, export tasks.",
    )
    def round_pipeline(
        campaign_uri: str,
        pool_annotations: str,
        image_root: str,
        val_annotations: str,
        labelled_annotations: str = "",
        config: str = "mask_rcnn_R50_FPN_gpu.yaml",
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
        check = check_parameters(
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
        prepare = no_cache(
            ingest_labels(
                campaign_uri=campaign_uri,
                pool_annotations=pool_annotations,
                labelled_annotations=labelled_annotations,
            ).after(check)
        ).set_display_name("ingest labels")
        train = train_model(
            labelled=prepare.outputs["labelled"],
            image_root=image_root,
            config=config,
            train_opts=train_opts,
            seed=seed,
            weights=weights,
        ).set_display_name("train")
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
        ).set_display_name("evaluate")
        on_gpu(evaluate, target)
        shards = infer_pool(
            train.outputs["model"],
            prepare.outputs["unlabelled"],
            image_root,
            num_shards=num_shards,
            target=target,
            label="",
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
            label="",
        )
        no_cache(
            export_for_labeling(
                selection=selection,
                instances=dsl.Collected(shards),
                model=train.outputs["model"],
                campaign_uri=campaign_uri,
                pool_annotations=pool_annotations,
                image_root=image_root,
                round_index=prepare.outputs["Output"],
            ).after(evaluate)
        ).set_display_name("export for labelling")

    return round_pipeline
