"""The last step of a round: labelling tasks out, ledger updated, report for the KFP UI."""

from kfp.dsl import HTML, Dataset, Input, Markdown, Model, Output

from taudis_kfp.components.images import cpu_component


@cpu_component
def export_for_labeling(
    selection: Input[Dataset],
    instances: Input[list[Dataset]],
    model: Input[Model],
    campaign_uri: str,
    pool_annotations: str,
    image_root: str,
    round_index: int,
    tasks: Output[Dataset],
    summary: Output[Markdown],
    report: Output[HTML],
):
    """Write labelling tasks, mark the chosen images pending, and report the round.

    tasks/: COCO pre-annotations, Label Studio tasks, CVAT archive, manifest.jsonl (taudis.labeling).
    summary: Markdown; report: self-contained HTML with thumbnails and the learning curve.
    """
    from taudis.campaign import finish_round, gather_shards

    finish_round(
        selection.path,
        gather_shards(part.path for part in instances),
        campaign_uri=campaign_uri,
        pool_annotations=pool_annotations,
        image_root=image_root,
        round_index=round_index,
        model_uri=model.uri,
        tasks_out=tasks.path,
        summary_out=summary.path,
        report_out=report.path,
    )
