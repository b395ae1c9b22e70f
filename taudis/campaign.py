"""The steps of one active-learning round over a campaign's state in storage.

Each pipeline component calls exactly one function of this module; each function joins the library
layers (storage, model, select, export, report) for one step, so that the components stay thin and
every step runs and is tested without KFP.

A campaign lives under one URI (a local directory or gs://bucket/prefix)::

    <campaign>/ledger.json                 pool, labelled, pending, remaining ids and round history
    <campaign>/labelled.json               the labelled COCO dataset, grown round by round
    <campaign>/incoming/*.json             annotators' COCO labels waiting to be ingested (files
                                           in subfolders, e.g. incoming/rejected/, are not read)
    <campaign>/rounds/round-<r>/           what round r produced:
        selection.json                     the chosen images and instances (taudis.select format)
        tasks/                             labelling tasks (COCO pre-annotations, Label Studio,
                                           CVAT archive, manifest.jsonl)
        summary.md, report.html            the round's report
        metrics.json                       mask and box AP of the round's model on the val split

Round r trains on the images labelled before it, evaluates, predicts the remaining pool and
marks its chosen images pending. Pending images become labelled when annotators' labels are
ingested (the round pipeline) or when the oracle reveals them (the campaign pipeline).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from taudis import storage
from taudis.data.instances import InstanceTableError, list_shards

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


@dataclass(frozen=True)
class Campaign:
    """Where a campaign's state lives."""

    uri: str

    @property
    def ledger(self) -> str:
        return storage.join(self.uri, "ledger.json")

    @property
    def labelled(self) -> str:
        return storage.join(self.uri, "labelled.json")

    @property
    def incoming(self) -> str:
        return storage.join(self.uri, "incoming")

    def round_dir(self, round_index: int) -> str:
        return storage.join(self.uri, "rounds", f"round-{round_index:03d}")

    def incoming_labels(self) -> list[str]:
        """The labels files waiting in ``<campaign>/incoming`` (its own ``*.json``, sorted)."""
        folder = self.incoming
        parent = folder.rstrip("/") if storage.is_gcs(folder) else str(storage.local_path(folder))
        listed = storage.list_uris(folder.rstrip("/") + "/")
        return [uri for uri in listed if uri.endswith(".json") and uri.rsplit("/", 1)[0] == parent]


def validate_round_parameters(
    *,
    strategy: str,
    budget: int,
    alpha: float,
    beta: float,
    sigma: float,
    metric: str,
    aggregation: str,
    uris: Sequence[str] = (),
) -> None:
    """Reject bad parameters before any training or inference starts.

    Raises:
        ValueError: naming the parameter and the accepted values.
        FileNotFoundError: a URI that must exist does not.
    """
    from taudis.select.pool import check_params

    check_params(budget, strategy, alpha, beta, sigma, metric, aggregation)
    for uri in uris:
        if uri and not storage.exists(uri):
            raise FileNotFoundError(f"{uri} does not exist")


@step
def prepare_round(
    campaign_uri: str,
    pool_annotations: str,
    labelled_annotations: str,
    labelled_out: str,
    unlabelled_out: str,
    *,
    oracle: bool,
) -> int:
    """Bring labels in, then write the round's labelled and unlabelled datasets.

    Creates the campaign on first use (ledger and labelled dataset from ``labelled_annotations``).
    Then either ingests every annotators' file in ``<campaign>/incoming`` (``oracle=False``) or
    reveals the ground truth of the pending images from ``pool_annotations`` (``oracle=True``,
    for simulation).

    Writes:
        labelled_out: COCO JSON of every labelled image and its annotations.
        unlabelled_out: COCO JSON of the pool images the ledger has as unlabelled (no annotations);
            images added to ``pool_annotations`` after the campaign was created are not in the
            ledger's pool, so they are left out (with a warning) instead of being chosen and
            refused by the ledger.

    Returns:
        The index of the round about to run (the number of rounds already recorded).
    """
    from taudis.storage.labels import ingest_labels, reveal_oracle_labels
    from taudis.storage.ledger import read_ledger

    campaign = Campaign(campaign_uri)
    pool = storage.read_json(pool_annotations)
    _ensure_campaign(campaign, pool, labelled_annotations)
    if oracle:
        pending = sorted(read_ledger(campaign.ledger).pending)
        if pending:
            reveal_oracle_labels(pool_annotations, pending, campaign.ledger, campaign.labelled)
    else:
        for labels in campaign.incoming_labels():
            ingest_labels(labels, campaign.ledger, campaign.labelled, pool_uri=pool_annotations)
    ledger = read_ledger(campaign.ledger)
    labelled = storage.read_json(campaign.labelled)
    storage.write_json(labelled_out, labelled)
    outside = sorted({img["id"] for img in pool["images"]} - set(ledger.pool))
    if outside:
        log.warning(
            "%d image(s) of %s are not in the pool of %s and cannot be chosen: %s",
            len(outside),
            pool_annotations,
            campaign.ledger,
            outside[:10],
        )
    storage.write_json(unlabelled_out, _subset(pool, ledger.unlabelled))
    return len(ledger.rounds)


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
) -> dict[str, Any]:
    """Train Mask R-CNN on the labelled set; see taudis.model.train.train_model for model_dir's files."""
    from taudis.model.train import train_model

    images = localize_images(labelled_annotations, image_root)
    return train_model(
        labelled_annotations, images, model_dir, config=config, opts=list(opts), seed=seed, weights=weights
    )


@step
def evaluate_round(
    model_dir: str,
    val_annotations: str,
    image_root: str,
    labelled_annotations: str,
    campaign_uri: str,
    round_index: int,
) -> dict[str, float]:
    """Evaluate the round's model on the val split and record the figures in the campaign.

    Writes ``<campaign>/rounds/round-<r>/metrics.json``: {"round", "labelled_images", "mask_ap",
    "box_ap", "per_class": {...}}.

    Returns:
        {"mask_ap", "box_ap", "labelled_images"} for the KFP Metrics artifact.
    """
    from taudis.model.evaluate import evaluate_model

    local_val = _local_copy(val_annotations)
    images = localize_images(local_val, image_root)
    result = evaluate_model(model_dir, local_val, images)
    labelled_images = len(storage.read_json(labelled_annotations)["images"])
    metrics: dict[str, Any] = {
        "round": round_index,
        "labelled_images": labelled_images,
        "mask_ap": _finite(result["segm"]["AP"]),
        "box_ap": _finite(result["bbox"]["AP"]),
        "per_class": {k: v for k, v in result["segm"].items() if k.startswith("AP-")},
    }
    storage.write_json(storage.join(Campaign(campaign_uri).round_dir(round_index), "metrics.json"), metrics)
    return {"mask_ap": metrics["mask_ap"], "box_ap": metrics["box_ap"], "labelled_images": float(labelled_images)}


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


@step
def finish_round(
    selection_path: str,
    instances_dir: str,
    *,
    campaign_uri: str,
    pool_annotations: str,
    image_root: str,
    round_index: int,
    model_uri: str,
    tasks_out: str,
    summary_out: str,
    report_out: str,
) -> dict[str, Any]:
    """Export labelling tasks, mark the chosen images pending, and write the round's report.

    Writes ``<campaign>/rounds/round-<r>/`` (selection.json, tasks/, summary.md, report.html) and the
    same files into the KFP output paths ``tasks_out`` (a directory), ``summary_out`` (Markdown) and
    ``report_out`` (HTML). The ledger is updated before anything is written under the round's
    folder: a retry finds its own record (a no-op), and a run that lost round r to another run
    fails without overwriting the winner's selection and tasks.

    Returns:
        The ledger's round entry.
    """
    from taudis.labeling import export_for_labeling
    from taudis.report import learning_curve_png, round_html, round_markdown
    from taudis.storage.ledger import record_round

    campaign = Campaign(campaign_uri)
    round_dir = campaign.round_dir(round_index)
    selection = json.loads(Path(selection_path).read_text())
    export_for_labeling(selection_path, instances_dir, pool_annotations, image_root, tasks_out)
    metrics = storage.read_json(storage.join(round_dir, "metrics.json"))
    chosen = [img["image_id"] for img in selection["images"]]
    ledger = record_round(
        campaign.ledger,
        round_index=round_index,
        strategy=selection["strategy"],
        params=selection["params"],
        image_ids=chosen,
        model_uri=model_uri,
        metrics={"mask_ap": metrics["mask_ap"], "box_ap": metrics["box_ap"]},
    )
    storage.write_bytes(storage.join(round_dir, "selection.json"), Path(selection_path).read_bytes())
    storage.upload_tree(tasks_out, storage.join(round_dir, "tasks"))
    history = learning_curve(campaign_uri)
    markdown = round_markdown(selection, round_index, metrics, metrics["labelled_images"])
    Path(summary_out).write_text(markdown)
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
    )
    storage.write_bytes(storage.join(round_dir, "summary.md"), markdown.encode())
    storage.write_bytes(storage.join(round_dir, "report.html"), Path(report_out).read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        curve = learning_curve_png(history, Path(tmp) / "learning_curve.png")
        storage.write_bytes(storage.join(campaign.uri, "learning_curve.png"), curve.read_bytes())
    return dict(ledger.round(round_index) or {})


def learning_curve(campaign_uri: str) -> list[dict[str, Any]]:
    """Every evaluated round of the campaign: {strategy, round, labelled_images, mask_ap, box_ap}."""
    from taudis.storage.ledger import read_ledger

    campaign = Campaign(campaign_uri)
    ledger = read_ledger(campaign.ledger)
    strategies = {entry["round"]: entry["strategy"] for entry in ledger.rounds}
    fallback = ledger.rounds[-1]["strategy"] if ledger.rounds else "unknown"
    points = []
    round_index = 0
    while storage.exists(metrics_uri := storage.join(campaign.round_dir(round_index), "metrics.json")):
        metrics = storage.read_json(metrics_uri)
        points.append(
            {
                "strategy": strategies.get(round_index, fallback),
                "round": round_index,
                "labelled_images": metrics["labelled_images"],
                "mask_ap": metrics["mask_ap"],
                "box_ap": metrics["box_ap"],
            }
        )
        round_index += 1
    return points


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


def _ensure_campaign(campaign: Campaign, pool: dict[str, Any], labelled_annotations: str) -> None:
    from taudis.storage.ledger import create_ledger

    if storage.exists(campaign.ledger):
        return
    labelled = storage.read_json(labelled_annotations) if labelled_annotations else _subset(pool, [])
    labelled_ids = [img["id"] for img in labelled["images"]]
    pool_ids = sorted({img["id"] for img in pool["images"]} | set(labelled_ids))
    if not storage.exists(campaign.labelled):
        storage.write_json(campaign.labelled, labelled)
    create_ledger(campaign.ledger, pool_ids, labelled_ids, exist_ok=True)


def _subset(coco: dict[str, Any], image_ids: Iterable[int]) -> dict[str, Any]:
    """A COCO dict with only the given images and no annotations."""
    keep = set(image_ids)
    return {
        "images": [img for img in coco["images"] if img["id"] in keep],
        "annotations": [],
        "categories": coco["categories"],
    }


def _local_copy(uri: str) -> str:
    """A local path with the content of ``uri`` (the path itself when ``uri`` is local)."""
    if not storage.is_gcs(uri):
        return str(storage.local_path(uri))
    target = Path(tempfile.mkdtemp(prefix="taudis-")) / os.path.basename(uri)
    return str(storage.download_file(uri, target))


def _finite(value: float) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else 0.0


__all__ = [
    "Campaign",
    "evaluate_round",
    "finish_round",
    "gather_shards",
    "infer_shard",
    "learning_curve",
    "localize_images",
    "prepare_round",
    "train_round",
    "validate_round_parameters",
]
