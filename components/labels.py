"""Components that check a run's parameters and bring labels in: the first steps of a round."""

from kfp.dsl import Dataset, Output

from taudis_kfp.components.images import cpu_component


@cpu_component
def check_parameters(
    strategy: str,
    budget: int,
    alpha: float,
    beta: float,
    sigma: float,
    metric: str,
    aggregation: str,
    universe: str,
    campaign_uri: str,
    pool_annotations: str,
    labelled_annotations: str,
    val_annotations: str,
):
    """Fail the run, before any training or inference, when a parameter or input URI is bad."""
    from taudis.campaign.steps import seed_needed, validate_round_parameters

    validate_round_parameters(
        strategy=strategy,
        budget=budget,
        alpha=alpha,
        beta=beta,
        sigma=sigma,
        metric=metric,
        aggregation=aggregation,
        universe=universe,
        uris=[pool_annotations, *([labelled_annotations] if seed_needed(campaign_uri) else [])],
        val_annotations=val_annotations,
    )


@cpu_component
def ingest_labels(
    campaign_uri: str,
    pool_annotations: str,
    round_index: int,
    run_id: str,
    labelled: Output[Dataset],
    unlabelled: Output[Dataset],
):
    """Ingest or quarantine the annotators' files in <campaign>/incoming, then split the pool.

    labelled: COCO JSON of every labelled image. unlabelled: COCO JSON of the pool images the
    round may choose from (neither labelled nor pending).
    """
    from taudis.campaign.steps import ingest_labels as ingest

    ingest(campaign_uri, pool_annotations, round_index, run_id, labelled.path, unlabelled.path, oracle=False)


@cpu_component
def reveal_oracle_labels(
    campaign_uri: str,
    pool_annotations: str,
    round_index: int,
    run_id: str,
    labelled: Output[Dataset],
    unlabelled: Output[Dataset],
):
    """Simulation: reveal the ground truth of the pending images, then split the pool.

    labelled / unlabelled: COCO JSON files, as for ingest_labels.
    """
    from taudis.campaign.steps import ingest_labels as ingest

    ingest(campaign_uri, pool_annotations, round_index, run_id, labelled.path, unlabelled.path, oracle=True)
