"""Components that move the round's state machine: claim a round, commit and publish it, close it."""

from kfp.dsl import HTML, Dataset, Input, Markdown

from taudis_kfp.components.images import cpu_component


@cpu_component
def claim_round(campaign_uri: str, pool_annotations: str, labelled_annotations: str, run_id: str) -> int:
    """Create the campaign on first use, finish what a dead run left half done, claim the next round.

    Returns the round index. Fails without changing anything when another live run owns the round.
    """
    from taudis.campaign.steps import claim_round as claim

    return claim(campaign_uri, pool_annotations, labelled_annotations, run_id)


@cpu_component
def commit_round(
    selection: Input[Dataset],
    tasks: Input[Dataset],
    summary: Input[Markdown],
    report: Input[HTML],
    campaign_uri: str,
    round_index: int,
    run_id: str,
):
    """Stage the round's tasks and reports, record its chosen images as pending, publish to rounds/round-r/."""
    from taudis.campaign.steps import commit_round as commit

    commit(
        selection.path,
        tasks.path,
        summary.path,
        report.path,
        campaign_uri=campaign_uri,
        round_index=round_index,
        run_id=run_id,
    )


@cpu_component
def close_round(campaign_uri: str, round_index: int, run_id: str):
    """End an evaluation-only round (the campaign pipeline's last): its metrics close the learning curve."""
    from taudis.campaign.steps import close_round as close

    close(campaign_uri, round_index, run_id)
