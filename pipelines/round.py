"""The round pipeline: one active-learning round per run, for recurring runs on a schedule.

ingest finished labels -> train -> evaluate -> infer the unlabelled pool in shards -> select
(score, oversample, max k-cover, vote) -> export labelling tasks, mark them pending, report.
The strategy, the number of inference shards and the target platform are fixed when compiling.
"""

from kfp import dsl

from taudis_kfp.components import ingest_labels
from taudis_kfp.pipelines.common import RunInputs, check, label_step, select_and_export, train_and_evaluate


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
        run = RunInputs.of(locals())
        labels = label_step(ingest_labels, run, check(run, strategy), "", "ingest labels")
        train, evaluate = train_and_evaluate(run, labels, target=target, label="")
        select_and_export(
            run, labels, train, evaluate, strategy=strategy, num_shards=num_shards, target=target, label=""
        )

    return round_pipeline
