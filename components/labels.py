"""Components that bring labels in and check a run's parameters: the first steps of a round."""

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
    pool_annotations: str,
    labelled_annotations: str,
    val_annotations: str,
):
    """Fail the run, before any training or inference, when a parameter or input URI is bad."""
    from taudis.campaign import validate_round_parameters

    validate_round_parameters(
        strategy=strategy,
        budget=budget,
        alpha=alpha,
        beta=beta,
        sigma=sigma,
        metric=metric,
        aggregation=aggregation,
        uris=[pool_annotations, labelled_annotations, val_annotations],
    )


@cpu_component
def ingest_labels(
    campaign_uri: str,
    pool_annotations: str,
    labelled_annotations: str,
    labelled: Output[Dataset],
    unlabelled: Output[Dataset],
) -> int:
    """Ingest the annotators' labels waiting in <campaign>/incoming, then split the pool.

    Returns the round index. labelled: COCO JSON of all labelled images. unlabelled: COCO JSON of
    the pool images neither labelled nor pending.
    """
    from taudis.campaign import prepare_round

    return prepare_round(
        campaign_uri, pool_annotations, labelled_annotations, labelled.path, unlabelled.path, oracle=False
    )


@cpu_component
def reveal_oracle_labels(
    campaign_uri: str,
    pool_annotations: str,
    labelled_annotations: str,
    labelled: Output[Dataset],
    unlabelled: Output[Dataset],
) -> int:
    """Simulation: reveal the ground truth of the pending images, then split the pool.

    Returns the round index. labelled / unlabelled: COCO JSON files, as for ingest_labels.
    """
    from taudis.campaign import prepare_round

    return prepare_round(
        campaign_uri, pool_annotations, labelled_annotations, labelled.path, unlabelled.path, oracle=True
    )
