"""Components of the model: train, evaluate, infer (the GPU image)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from taudis_kfp.components.images import gpu_component


@gpu_component
def train_model(
    labelled: Input[Dataset],
    image_root: str,
    config: str,
    train_opts: str,
    seed: int,
    weights: str,
    campaign_uri: str,
    round_index: int,
    finetune: bool,
    model: Output[Model],
):
    """Train Mask R-CNN on the labelled COCO dataset (from the previous round's model when finetune).

    model/: model_final.pth, config.yaml, metrics.json (see taudis.model.train.train_model).
    train_opts: detectron2 config overrides, "KEY VALUE KEY VALUE ...".
    """
    from taudis.campaign.steps import split_opts, train_round

    train_round(
        labelled.path,
        image_root,
        model.path,
        config=config,
        opts=split_opts(train_opts),
        seed=seed,
        weights=weights,
        campaign_uri=campaign_uri,
        round_index=round_index,
        finetune=finetune,
    )


@gpu_component
def evaluate_model(
    model: Input[Model],
    labelled: Input[Dataset],
    val_annotations: str,
    image_root: str,
    campaign_uri: str,
    round_index: int,
    run_id: str,
    metrics: Output[Metrics],
):
    """Mask and box AP on the val split, logged as Metrics and recorded as the round's (its owner only)."""
    from taudis.campaign.steps import evaluate_round

    for name, value in evaluate_round(
        model.path, model.uri, val_annotations, image_root, labelled.path, campaign_uri, round_index, run_id
    ).items():
        metrics.log_metric(name, value)


@gpu_component
def infer_instances(
    model: Input[Model],
    unlabelled: Input[Dataset],
    image_root: str,
    shard: int,
    num_shards: int,
    instances: Output[Dataset],
):
    """Predict one shard of the unlabelled pool.

    instances/: one instance-table shard directory, shard-<i>-of-<n> (taudis.data.instances).
    """
    from taudis.campaign.steps import infer_shard

    infer_shard(model.path, unlabelled.path, image_root, instances.path, shard, num_shards)
