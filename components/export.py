"""Components that write what a round hands to people: labelling tasks, and the round's report."""

from kfp.dsl import HTML, Dataset, Input, Markdown, Output

from taudis_kfp.components.images import cpu_component


@cpu_component
def export_tasks(
    selection: Input[Dataset],
    instances: Input[list[Dataset]],
    pool_annotations: str,
    image_root: str,
    labelstudio_url_prefix: str,
    tasks: Output[Dataset],
):
    """Labelling tasks for the chosen images (files only; commit_round publishes them).

    tasks/: COCO pre-annotations, Label Studio tasks and labelling config, CVAT COCO 1.0 archive,
    manifest.jsonl (taudis.labeling.export_for_labeling).
    """
    from taudis.campaign.steps import export_tasks as export
    from taudis.campaign.steps import gather_shards

    export(
        selection.path,
        gather_shards(part.path for part in instances),
        pool_annotations,
        image_root,
        tasks.path,
        labelstudio_url_prefix=labelstudio_url_prefix,
    )


@cpu_component
def report_round(
    selection: Input[Dataset],
    instances: Input[list[Dataset]],
    campaign_uri: str,
    pool_annotations: str,
    image_root: str,
    round_index: int,
    summary: Output[Markdown],
    report: Output[HTML],
):
    """The round's report for the KFP UI: a Markdown summary and a self-contained HTML page.

    summary: metrics, labels in (files ingested or rejected), parameters, counts, chosen images.
    report: thumbnails of the chosen images with their predicted masks, the learning curve.
    """
    from taudis.campaign.steps import gather_shards
    from taudis.campaign.steps import report_round as report_step

    report_step(
        selection.path,
        gather_shards(part.path for part in instances),
        pool_annotations,
        image_root,
        campaign_uri,
        round_index,
        summary.path,
        report.path,
    )
