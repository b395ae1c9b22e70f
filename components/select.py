"""Components of the selection: score, oversample, cover, vote (TAUDIS) and the baselines."""

from kfp.dsl import Dataset, Input, Output

from taudis_kfp.components.images import cpu_component


@cpu_component
def score_uncertainty(instances: Input[list[Dataset]], scores: Output[Dataset]):
    """Every metric's uncertainty for every predicted instance; files: taudis.select.stages.score_uncertainty."""
    from taudis.campaign.steps import gather_shards
    from taudis.select.stages import score_uncertainty as score

    score(gather_shards(part.path for part in instances), scores.path)


@cpu_component
def oversample_instances(scores: Input[Dataset], budget: int, alpha: float, metric: str, candidates: Output[Dataset]):
    """The ceil(alpha * budget) most uncertain instances; files: taudis.select.stages.oversample_instances."""
    from taudis.select.stages import oversample_instances as oversample

    oversample(scores.path, candidates.path, budget=budget, alpha=alpha, metric=metric)


@cpu_component
def select_max_k_cover(
    instances: Input[list[Dataset]],
    candidates: Input[Dataset],
    budget: int,
    beta: float,
    sigma: float,
    universe: str,
    centre: bool,
    whiten: bool,
    cover: Output[Dataset],
):
    """A diverse ceil(beta * budget) of the candidates by greedy max k-cover; files: taudis.select.stages.

    universe: what the cover must cover, "candidates" or every "pool" instance. centre: centre the
    embeddings on their mean before the cosine graph; whiten: whiten them on the pool's statistics.
    """
    from taudis.campaign.steps import gather_shards
    from taudis.select.stages import select_max_k_cover as max_k_cover

    max_k_cover(
        gather_shards(part.path for part in instances),
        candidates.path,
        cover.path,
        budget=budget,
        beta=beta,
        sigma=sigma,
        universe=universe,
        centre=centre,
        whiten=whiten,
    )


@cpu_component
def vote_images(
    scores: Input[Dataset], cover: Input[Dataset], budget: int, aggregation: str, seed: int, selection: Output[Dataset]
):
    """Images by majority vote of the chosen instances; selection: the selection JSON (taudis.select)."""
    from taudis.select.stages import vote_images as vote

    vote(scores.path, cover.path, selection.path, budget=budget, aggregation=aggregation, seed=seed)


@cpu_component
def select_baseline(
    instances: Input[list[Dataset]],
    strategy: str,
    budget: int,
    alpha: float,
    beta: float,
    sigma: float,
    metric: str,
    aggregation: str,
    seed: int,
    universe: str,
    centre: bool,
    whiten: bool,
    selection: Output[Dataset],
):
    """A baseline strategy (random, uncertainty, diversity) with the run's parameters; the selection JSON."""
    from taudis.campaign.steps import gather_shards
    from taudis.select import select

    select(
        gather_shards(part.path for part in instances),
        budget,
        strategy,
        alpha=alpha,
        beta=beta,
        sigma=sigma,
        metric=metric,
        aggregation=aggregation,
        seed=seed,
        universe=universe,
        centre=centre,
        whiten=whiten,
    ).save(selection.path)


@cpu_component
def select_coreset(
    instances: Input[list[Dataset]],
    labelled: Input[Dataset],
    budget: int,
    metric: str,
    aggregation: str,
    seed: int,
    selection: Output[Dataset],
):
    """Core-set (greedy k-center on image embeddings) from the labelled images as the first centers.

    labelled: the instance shard of the labelled images (their embeddings). selection: the selection JSON.
    """
    from taudis.campaign.steps import gather_shards
    from taudis.select import select

    select(
        gather_shards(part.path for part in instances),
        budget,
        "coreset",
        metric=metric,
        aggregation=aggregation,
        seed=seed,
        labelled=labelled.path,
    ).save(selection.path)
