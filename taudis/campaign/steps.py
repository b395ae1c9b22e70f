"""The steps of one active-learning round: each pipeline component calls exactly one function here.

A step joins the library layers (storage, model, select, labeling, report) for one job, and moves
the round's state machine (taudis.campaign.rounds) only where its name says:

    claim_round          create the campaign on first use, finish what a dead run left, claim round r
    ingest_labels        follow the pool file, ingest annotators' files (or reveal the oracle's labels),
                         write the round's labelled and unlabelled datasets
    train_round          train Mask R-CNN on the labelled set (optionally from the previous round's model)
    evaluate_round       mask and box AP on the val split, recorded as round r's (owner only)
    infer_shard          predict one shard of the unlabelled pool
    export_tasks         labelling tasks for the chosen images (files only, no state)
    report_round         the round's Markdown and HTML report (files only, no state)
    commit_round         stage tasks and reports, record the selection (images pending), publish
    close_round          end an evaluation-only round (the campaign pipeline's last)

Every step is idempotent: KFP retries it (set_retry) and a retry finds what the first attempt
already recorded. Steps that need the run's identity get ``run_id`` (the pipeline run's id).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shlex
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from taudis import storage
from taudis.campaign import rounds
from taudis.campaign.ingest import ingest_incoming, seed_in_pool_terms, summarize
from taudis.campaign.labels import known_file_names, part_document, publish_labelled, reveal_oracle_labels, write_part
from taudis.campaign.layout import Campaign
from taudis.campaign.pool import check_pool_names, ensure_ledger, load_pool, sync_pool
from taudis.campaign.withdraw import finish_withdrawals
from taudis.data.instances import InstanceTableError, list_shards
from taudis.storage.ledger import LabelPart, read_ledger

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger(__name__)


def step(func: Callable[P, R]) -> Callable[P, R]:
    """Mark a pipeline step: when it runs, taudis's progress logs go to stderr, into the step's log.

    Library functions only log; a step runs as a process of its own, so it chooses where logs go.
    """

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        show_progress()
        return func(*args, **kwargs)

    return run


def show_progress() -> None:
    """Send taudis's INFO logs to stderr (once per process)."""
    logger = logging.getLogger("taudis")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def validate_round_parameters(
    *,
    strategy: str,
    budget: int,
    alpha: float,
    beta: float,
    sigma: float,
    metric: str,
    aggregation: str,
    universe: str = "candidates",
    uris: Sequence[str] = (),
    val_annotations: str = "",
) -> None:
    """Reject bad parameters before any training or inference starts.

    ``val_annotations``, where given, is read too: valid COCO with an object to score, or every
    round of a campaign that may run for months would record a mask AP of nothing.

    Raises:
        ValueError: naming the parameter and the accepted values, or the val file and what it lacks.
        FileNotFoundError: a URI that must exist does not.
        taudis.data.coco.CocoFormatError: the val file is no valid COCO (naming the record and field).
    """
    from taudis.data.coco import load_coco, nothing_to_score
    from taudis.select.pool import check_params
    from taudis.select.strategies import check_cover_options

    check_params(budget, strategy, alpha, beta, sigma, metric, aggregation)
    check_cover_options(universe, 1)
    for uri in [*uris, val_annotations]:
        if uri and not storage.exists(uri):
            raise FileNotFoundError(f"{uri} does not exist")
    if val_annotations:
        problem = nothing_to_score(load_coco(val_annotations))
        if problem:
            raise ValueError(f"{val_annotations}: {problem}: the val split must hold an object COCO evaluation scores")


def _recorder(campaign: Campaign, round_index: int, run_id: str) -> Callable[[Any], None]:
    """Each incoming file's outcome into round r's facts as it is decided (taudis.campaign.ingest.Recorder)."""

    def record(outcome: Any) -> None:
        rounds.record_round_facts(campaign, round_index, run_id, {"ingest": summarize([outcome])})

    return record


def seed_needed(campaign_uri: str) -> bool:
    """Whether a run reads the seed (the initial labelled set): only the one that creates the
    campaign's ledger does, so a seed file removed months later stops no round."""
    return not storage.exists(Campaign(campaign_uri).ledger)


# ------------------------------------------------------------------------------------- labels


@step
def claim_round(campaign_uri: str, pool_annotations: str, labelled_annotations: str, run_id: str) -> int:
    """Create the campaign on first use (its seed: ``labelled_annotations``), recover, claim the next round.

    Returns:
        The index of the round this run now owns.

    Raises:
        taudis.campaign.rounds.RoundBusyError: another live run owns the round; nothing was changed.
    """
    campaign = Campaign(campaign_uri)
    pool = load_pool(pool_annotations)
    seed = None
    if labelled_annotations and seed_needed(campaign.uri):
        seed = seed_part(campaign, labelled_annotations, pool)
    ensure_ledger(campaign, pool, seed)
    return rounds.claim_round(campaign, run_id)


def seed_part(campaign: Campaign, labelled_annotations: str, pool: Mapping[str, Any]) -> LabelPart:
    """The label part of a campaign's initial labelled set, in the pool's terms, written once."""
    from taudis.data.coco import load_coco

    seed = seed_in_pool_terms(load_coco(labelled_annotations), pool, labelled_annotations)
    op_id = "seed:" + os.path.basename(labelled_annotations)
    document = part_document(seed["images"], seed["annotations"], seed["categories"], op_id=op_id, source="seed")
    return write_part(campaign, document, op_id=op_id, source="seed")


@step
def ingest_labels(
    campaign_uri: str,
    pool_annotations: str,
    round_index: int,
    run_id: str,
    labelled_out: str,
    unlabelled_out: str,
    *,
    oracle: bool,
) -> dict[str, Any]:
    """Follow the pool file, bring labels in, then write the round's labelled and unlabelled datasets.

    ``oracle=False``: every annotators' file in ``<campaign>/incoming`` is ingested or quarantined
    (taudis.campaign.ingest). ``oracle=True`` (simulation): the pending images get their ground
    truth from ``pool_annotations``.

    Writes:
        labelled_out: COCO JSON of every labelled image and its annotations (also published as
            ``<campaign>/labelled.json``).
        unlabelled_out: COCO JSON of the pool file's images the ledger has as unlabelled, without
            annotations: what the round may choose from.

    Returns:
        The facts recorded in round r's record: pool changes, labels in, labelled images.
    """
    campaign = Campaign(campaign_uri)
    rounds.renew_claim(campaign, round_index, run_id)
    pool = load_pool(pool_annotations)
    check_pool_names(pool, known_file_names(campaign), pool_annotations)
    sync_pool(campaign, pool, also=rounds.pool_change_recorder(round_index, run_id))  # recorded as it lands
    finish_withdrawals(campaign)  # one whose own run died after its ledger update
    facts: dict[str, Any] = {}
    if oracle:
        facts["oracle"] = reveal_oracle_labels(campaign, pool)
    else:
        facts["ingest"] = summarize(
            ingest_incoming(campaign_uri, pool, record=_recorder(campaign, round_index, run_id))
        )
    # Still this run's round? Ingesting may take long enough for an operator to release a run
    # believed dead and withdraw images; the published labelled.json must not bring them back.
    rounds.renew_claim(campaign, round_index, run_id)
    dataset, ledger = publish_labelled(campaign)
    facts["labelled_images"] = len(dataset["images"])
    storage.write_json(labelled_out, dataset)
    keep = ledger.unlabelled
    storage.write_json(
        unlabelled_out,
        {
            "images": [im for im in pool["images"] if int(im["id"]) in keep],
            "annotations": [],
            "categories": pool["categories"],
        },
    )
    rounds.record_round_facts(campaign, round_index, run_id, facts)
    recorded = read_ledger(campaign.ledger).round(round_index) or {}
    return {"pool": recorded.get("pool", {}), **facts}


# -------------------------------------------------------------------------------------- model


@step
def train_round(
    labelled_annotations: str,
    image_root: str,
    model_dir: str,
    *,
    config: str,
    opts: Sequence[str] = (),
    seed: int = 0,
    weights: str = "",
    campaign_uri: str = "",
    round_index: int = 0,
    finetune: bool = False,
) -> dict[str, Any]:
    """Train Mask R-CNN on the labelled set; see taudis.model.train.train_model for model_dir's files.

    With ``finetune``, training starts from the model of the campaign's latest recorded round
    before ``round_index`` (when there is one) on the config's shorter fine-tuning schedule; where
    that model is gone, from ``weights`` on the full schedule, with a note (:func:`finetune_weights`).
    """
    from taudis.model.train import train_model

    previous, note = finetune_weights(Campaign(campaign_uri), round_index) if finetune and campaign_uri else ("", "")
    images = localize_images(labelled_annotations, image_root)
    return train_model(
        labelled_annotations,
        images,
        model_dir,
        config=config,
        opts=list(opts),
        seed=seed,
        weights=previous or weights,
        finetune=bool(previous),
        notes=[note] if note else [],
    )


def finetune_weights(campaign: Campaign, round_index: int) -> tuple[str, str]:
    """The weights a fine-tuned round ``round_index`` starts from, and why not, when it cannot.

    The weights are the model of the latest round before it that recorded one. A campaign that runs
    for months outlives its artifact store's expiry rules: where that model is gone, the round
    trains from the run's initial weights (from scratch when there are none) on the full schedule
    and says so, rather than failing every week.

    Returns:
        (weights URI, "") to fine-tune from; ("", note) where the model is gone; ("", "") where no
        earlier round recorded one (round 0).
    """
    ledger = read_ledger(campaign.ledger)
    earlier = [
        r for r in ledger.rounds if r["round"] < round_index and r.get("model_uri") and r["state"] != "rolled_back"
    ]
    if not earlier:
        return "", ""
    latest = max(earlier, key=lambda r: r["round"])
    weights = storage.join(str(latest["model_uri"]), "model_final.pth")
    if storage.exists(weights):
        log.info("fine-tuning from round %d's model %s", latest["round"], weights)
        return weights, ""
    note = (
        f"not fine-tuned: round {latest['round']}'s model {weights} is gone (an expiry rule on the pipeline "
        "root?), so this round trained on the full schedule from the run's initial weights (from scratch when "
        "there are none)"
    )
    log.warning("%s", note)
    return "", note


@step
def evaluate_round(
    model_dir: str,
    model_uri: str,
    val_annotations: str,
    image_root: str,
    labelled_annotations: str,
    campaign_uri: str,
    round_index: int,
    run_id: str,
) -> dict[str, float]:
    """Evaluate the round's model on the val split and record the figures as round r's.

    Recorded in the ledger (only while this run owns the round): {"labelled_images", "mask_ap",
    "box_ap", "per_class": {...}, "warnings": [...]}; published to rounds/round-r/metrics.json
    with the round. The warnings are the training's: where the labelled data does not fit the
    config (taudis.model.fit), so that the round's report says why a model learns little.

    Returns:
        {"mask_ap", "box_ap", "labelled_images"} for the KFP Metrics artifact.

    Raises:
        taudis.campaign.rounds.RoundLostError: another run took the round over (nothing recorded).
    """
    from taudis.model.evaluate import evaluate_model

    campaign = Campaign(campaign_uri)
    rounds.renew_claim(campaign, round_index, run_id)
    local_val = _local_copy(val_annotations)
    images = localize_images(local_val, image_root)
    result = evaluate_model(model_dir, local_val, images)
    labelled_images = len(storage.read_json(labelled_annotations)["images"])
    metrics: dict[str, Any] = {
        "labelled_images": labelled_images,
        "mask_ap": _finite(result["segm"]["AP"]),
        "box_ap": _finite(result["bbox"]["AP"]),
        "mask_ap50": _finite(result["segm"]["AP50"]),
        "per_class": {k: v for k, v in result["segm"].get("per_class", {}).items()},
        "warnings": training_warnings(model_dir),
    }
    rounds.record_evaluation(campaign, round_index, run_id, metrics, model_uri)
    return {"mask_ap": metrics["mask_ap"], "box_ap": metrics["box_ap"], "labelled_images": float(labelled_images)}


def training_warnings(model_dir: str) -> list[str]:
    """What the model's training warned about (its metrics.json's data_fit problems and notes); [] if nothing."""
    path = storage.join(model_dir, "metrics.json")
    if not storage.exists(path):
        return []
    metrics = storage.read_json(path)
    fit = metrics.get("data_fit") or {}
    return [str(problem) for problem in [*fit.get("problems", []), *metrics.get("notes", [])]]


@step
def infer_shard(
    model_dir: str, unlabelled_annotations: str, image_root: str, out_dir: str, shard: int, num_shards: int
) -> Path:
    """Predict one shard of the unlabelled pool; see taudis.model.infer.infer_instances."""
    from taudis.model.infer import infer_instances

    images = localize_images(unlabelled_annotations, image_root, shard=shard, num_shards=num_shards)
    return infer_instances(model_dir, unlabelled_annotations, images, out_dir, shard=shard, num_shards=num_shards)


def gather_shards(shard_dirs: Iterable[str]) -> str:
    """A new temporary directory holding every shard of ``shard_dirs`` (symlinks), for the selection stages.

    Each element is a directory written by infer_shard: it holds shard directories (or is one).

    Raises:
        InstanceTableError: two shards have the same name (one would hide the other's images).
    """
    target = Path(tempfile.mkdtemp(prefix="taudis-shards-"))
    for directory in shard_dirs:
        for shard in list_shards(directory):
            link = target / shard.name
            if link.is_symlink():
                raise InstanceTableError(shard, f"has the same name as {link.resolve()}: shards need distinct names")
            link.symlink_to(shard.resolve(), target_is_directory=True)
    return str(target)


# ------------------------------------------------------------------------------------ publish


@step
def export_tasks(
    selection_path: str,
    instances_dir: str,
    pool_annotations: str,
    image_root: str,
    tasks_out: str,
    *,
    labelstudio_url_prefix: str = "",
) -> dict[str, str]:
    """Labelling tasks for the chosen images into ``tasks_out`` (taudis.labeling.export_for_labeling's layout).

    ``labelstudio_url_prefix``: how Label Studio tasks name images ("" keeps each image's URI;
    see taudis.labeling.labelstudio for the forms).
    """
    from taudis.labeling import export_for_labeling

    return export_for_labeling(
        selection_path,
        instances_dir,
        pool_annotations,
        image_root,
        tasks_out,
        labelstudio_url_prefix=labelstudio_url_prefix or None,
    )


@step
def report_round(
    selection_path: str,
    instances_dir: str,
    pool_annotations: str,
    image_root: str,
    campaign_uri: str,
    round_index: int,
    summary_out: str,
    report_out: str,
) -> None:
    """The round's Markdown summary and self-contained HTML report (thumbnails, learning curve, labels in)."""
    from taudis.report import round_html, round_markdown

    ledger = read_ledger(Campaign(campaign_uri).ledger)
    record = ledger.round(round_index) or {}
    metrics = dict(record.get("metrics") or {})
    selection = json.loads(Path(selection_path).read_text())
    history = rounds.curve_of(ledger)
    intake = dict(record.get("ingest") or {})
    markdown = round_markdown(selection, round_index, metrics, int(metrics.get("labelled_images", 0)), intake=intake)
    Path(summary_out).parent.mkdir(parents=True, exist_ok=True)
    Path(summary_out).write_text(markdown)
    chosen = [img["image_id"] for img in selection["images"]]
    local_pool = _local_copy(pool_annotations)
    images = localize_images(local_pool, image_root, image_ids=chosen)
    round_html(
        selection_path,
        instances_dir,
        local_pool,
        images,
        history,
        report_out,
        title=f"taudis round {round_index} ({selection['strategy']})",
        metrics=metrics,
        intake=intake,
    )


@step
def commit_round(
    selection_path: str,
    tasks_dir: str,
    summary_path: str,
    report_path: str,
    *,
    campaign_uri: str,
    round_index: int,
    run_id: str,
) -> dict[str, Any]:
    """Stage the round's outputs, record its selection (images pending), and publish it.

    The outputs go to this run's staging archive first; the ledger's compare-and-swap then decides
    whether this run's selection is round r's; only then are they copied to rounds/round-r/.

    Returns:
        The round's ledger record.

    Raises:
        taudis.campaign.rounds.RoundLostError: another run took the round over (nothing published).
    """
    campaign = Campaign(campaign_uri)
    record = read_ledger(campaign.ledger).round(round_index) or {}
    if record.get("run") == run_id and record["state"] in ("selected", "exported"):
        # A retry whose first attempt committed: publishing is all that may be left.
        if not rounds.publish_round(campaign, round_index):
            raise storage.StorageError(f"round {round_index}: its staged outputs vanished before they were published")
        return dict(read_ledger(campaign.ledger).round(round_index) or {})
    rounds.renew_claim(campaign, round_index, run_id)  # fail early, before staging, if the round was lost
    selection = json.loads(Path(selection_path).read_text())
    files = {
        "selection.json": Path(selection_path).read_bytes(),
        "summary.md": Path(summary_path).read_bytes(),
        "report.html": Path(report_path).read_bytes(),
    }
    root = Path(tasks_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        files[f"tasks/{path.relative_to(root).as_posix()}"] = path.read_bytes()
    staging = rounds.stage_files(campaign, round_index, run_id, files)
    rounds.commit_selection(campaign, round_index, run_id, selection, staging)
    if not rounds.publish_round(campaign, round_index):
        raise storage.StorageError(f"{campaign.file(staging)}: the staged round vanished before it was published")
    return dict(read_ledger(campaign.ledger).round(round_index) or {})


@step
def close_round(campaign_uri: str, round_index: int, run_id: str) -> None:
    """End an evaluation-only round: its metrics become the learning curve's last point."""
    rounds.close_round(Campaign(campaign_uri), round_index, run_id)


# ------------------------------------------------------------------------------------ helpers


def learning_curve(campaign_uri: str) -> list[dict[str, Any]]:
    """Every evaluated round of the campaign: {strategy, round, labelled_images, mask_ap, box_ap}."""
    return rounds.curve_of(read_ledger(Campaign(campaign_uri).ledger))


def localize_images(
    annotations: str,
    image_root: str,
    *,
    image_ids: Iterable[int] | None = None,
    shard: int = 0,
    num_shards: int = 1,
) -> str:
    """A local directory holding the images of ``annotations`` (those of ``image_ids``, or of one shard).

    A local ``image_root`` is returned as a path (a ``file://`` prefix dropped); from a gs:// root
    the images are copied to a temporary directory. The shard's images are those
    taudis.model.infer will read.
    """
    if not storage.is_gcs(image_root):
        return str(storage.local_path(image_root))
    from taudis.model.infer import shard_images

    images = storage.read_json(annotations)["images"]
    if image_ids is None:
        images = shard_images(images, shard, num_shards)
    else:
        wanted = set(image_ids)
        images = [image for image in images if image["id"] in wanted]
    target = Path(tempfile.mkdtemp(prefix="taudis-images-"))
    for image in images:
        storage.download_file(storage.join(image_root, image["file_name"]), target / image["file_name"])
    return str(target)


def split_opts(text: str) -> list[str]:
    """Config overrides given as one string, "KEY VALUE KEY VALUE ..." (shell quoting)."""
    return shlex.split(text)


def _local_copy(uri: str) -> str:
    """A local path with the content of ``uri`` (the path itself when ``uri`` is local)."""
    if not storage.is_gcs(uri):
        return str(storage.local_path(uri))
    target = Path(tempfile.mkdtemp(prefix="taudis-")) / os.path.basename(uri)
    return str(storage.download_file(uri, target))


def _finite(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else 0.0
