"""The campaign pipeline: K active-learning rounds unrolled at compile time, labels from an oracle.

For simulation and benchmarks on a fully labelled dataset: each round claims its index, has the
oracle reveal the ground truth of the images chosen by the round before, trains on what is
labelled, evaluates on the val split (a Metrics artifact per round), predicts the rest of the
pool, selects a batch with the compiled-in strategy and commits it. A last round only trains and
evaluates, closing the learning curve.
"""

from kfp import dsl

from taudis_kfp.components import reveal_oracle_labels
from taudis_kfp.pipelines.common import (
    RunInputs,
    begin_round,
    check,
    end_round,
    select_and_commit,
    train_and_evaluate,
)


def build_campaign_pipeline(
    strategy: str = "taudis", *, rounds: int = 3, num_shards: int = 1, target: str = "kubernetes"
):
    """The campaign pipeline: ``rounds`` selections with ``strategy``, then a final evaluation.

    A campaign whose ledger already holds rounds goes on from its next round, so a campaign cut
    short is finished by running the pipeline with the rounds it still lacks (0: the final
    evaluation only).
    """
    if rounds < 0:
        raise ValueError(f"rounds must be at least 0, got {rounds}")

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
        previous = check(run, strategy, target)
        for round_index in range(rounds + 1):
            label = f"round {round_index}: "
            start = begin_round(run, previous, reveal_oracle_labels, oracle=True, target=target, label=label)
            train, evaluate = train_and_evaluate(run, start, target=target, label=label)
            if round_index < rounds:
                previous = select_and_commit(
                    run, start, train, evaluate, strategy=strategy, num_shards=num_shards, target=target, label=label
                )
            else:
                end_round(run, start, evaluate, target=target, label=label)

    return campaign_pipeline
