"""The round pipeline: one active-learning round per run, for recurring runs on a schedule.

claim the next round -> ingest finished labels -> train -> evaluate -> infer the unlabelled pool in
shards -> select (score, oversample, max k-cover, vote) -> export labelling tasks and report ->
commit the round (its images pending, its tasks published). A run that finds the round claimed by
another live run stops at its first step without changing anything. The strategy, the number of
inference shards and the target platform are fixed when compiling.
"""

from kfp import dsl

from taudis_kfp.components import ingest_labels
from taudis_kfp.pipelines.common import RunInputs, begin_round, check, select_and_commit, train_and_evaluate


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
        finetune: bool = False,
        budget: int = 10,
        alpha: float = 2.5,
        beta: float = 1.5,
        sigma: float = 0.8,
        metric: str = "product_rank",  # taudis.select.uncertainty.DEFAULT_METRIC
        aggregation: str = "mean",
        universe: str = "candidates",
        centre: bool = False,
        whiten: bool = False,
        seed: int = 0,
        labelstudio_url_prefix: str = "",
    ):
        run = RunInputs.of(locals())
        start = begin_round(run, check(run, strategy, target), ingest_labels, oracle=False, target=target, label="")
        train, evaluate = train_and_evaluate(run, start, target=target, label="")
        select_and_commit(
            run, start, train, evaluate, strategy=strategy, num_shards=num_shards, target=target, label=""
        )

    return round_pipeline
