"""The invariants every campaign keeps between steps, checked against what is in storage.

1. The ledger's labelled, pending and unlabelled sets are disjoint and make up the pool.
2. Every pending image has tasks in exactly one round folder, that of the exported round that
   chose it; a round folder's tasks are exactly its round's chosen images, and exist only for
   rounds the ledger says were exported.
3. The labelled dataset holds exactly the labelled images and their annotations: every label part
   the ledger lists is there and holds the images it lists, and the published view
   (labelled.json) agrees; with ``expected``, each image's annotations equal the expected ones.
4. The learning curve has one point per evaluated round, rounds are numbered without gaps, and a
   round's published metrics.json holds the numbers the ledger recorded for its winning run.
5. No file under labels/, listed or not, and not labelled.json, holds a withdrawn image.

``taudis campaign check`` runs them; the fault-injection tests assert them after every fault.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from taudis import storage
from taudis.campaign.labels import annotations_by_image, labelled_dataset
from taudis.campaign.layout import Campaign
from taudis.campaign.rounds import curve_of, round_metrics
from taudis.storage.ledger import Ledger, LedgerError, read_ledger


def check_campaign(campaign_uri: str, expected: Mapping[int, list[tuple[int, str]]] | None = None) -> list[str]:
    """Every invariant violation of the campaign (an empty list when it keeps them all).

    Args:
        campaign_uri: the campaign's folder.
        expected: image id -> the annotations it must have (annotations_by_image's form), e.g.
            the ground truth of an oracle campaign.
    """
    campaign = Campaign(campaign_uri)
    try:
        ledger = read_ledger(campaign.ledger)
    except (LedgerError, storage.StorageError) as err:
        return [f"the ledger cannot be read: {err}"]
    return [
        *_sets(ledger),
        *_tasks(campaign, ledger),
        *_labels(campaign, ledger, expected),
        *_curve(campaign, ledger),
        *_withdrawn(campaign, ledger),
    ]


def _sets(ledger: Ledger) -> list[str]:
    out = []
    labelled, pending, unlabelled = ledger.labelled, ledger.pending, ledger.unlabelled
    if labelled & pending or labelled & unlabelled or pending & unlabelled:
        out.append("labelled, pending and unlabelled overlap")
    if labelled | pending | unlabelled != ledger.pool:
        out.append("labelled + pending + unlabelled is not the pool")
    return out


def round_folder_tasks(campaign: Campaign) -> dict[int, list[int]]:
    """Round index -> the image ids of its published tasks (manifest.jsonl), for every round folder."""
    found: dict[int, list[int]] = {}
    prefix = storage.join(campaign.uri, "rounds").rstrip("/") + "/"
    for uri in storage.list_uris(prefix):
        if not uri.endswith("/tasks/manifest.jsonl"):
            continue
        folder = uri[len(prefix) :].split("/", 1)[0]
        if not folder.startswith("round-"):
            continue
        lines = storage.read_text(uri).splitlines()
        found[int(folder[len("round-") :])] = [int(json.loads(line)["image_id"]) for line in lines if line.strip()]
    return found


def _tasks(campaign: Campaign, ledger: Ledger) -> list[str]:
    out = []
    published = round_folder_tasks(campaign)
    records = {r["round"]: r for r in ledger.rounds}
    for index, images in sorted(published.items()):
        record = records.get(index)
        if record is None or record["state"] != "exported":
            state = "not recorded" if record is None else record["state"]
            out.append(f"round {index} has tasks in its folder but is {state}")
        elif sorted(images) != sorted(record.get("images", [])):
            out.append(f"round {index}'s tasks hold other images than the round chose")
    for index, record in sorted(records.items()):
        if record["state"] == "exported" and index not in published:
            out.append(f"round {index} is exported but its folder has no tasks")
    where: dict[int, list[int]] = {}
    for index, images in published.items():
        for image in images:
            where.setdefault(image, []).append(index)
    for image in sorted(ledger.pending):
        rounds_with_it = where.get(image, [])
        if len(rounds_with_it) != 1:
            out.append(f"pending image {image} has tasks in {len(rounds_with_it)} round folders {rounds_with_it}")
    for image in sorted(set(where) & ledger.unlabelled):
        out.append(f"unlabelled image {image} has tasks in round folders {where[image]}")
    return out


def _labels(campaign: Campaign, ledger: Ledger, expected: Mapping[int, list[tuple[int, str]]] | None) -> list[str]:
    try:
        dataset = labelled_dataset(campaign, ledger)
    except (LedgerError, storage.StorageError, KeyError, ValueError) as err:
        return [f"the labelled dataset cannot be assembled: {err}"]
    out = []
    images = {int(im["id"]) for im in dataset["images"]}
    if images != ledger.labelled or len(images) != len(dataset["images"]):
        out.append("the labelled dataset's images are not the ledger's labelled images (once each)")
    if any(int(a["image_id"]) not in images for a in dataset["annotations"]):
        out.append("the labelled dataset has annotations of images it does not hold")
    if storage.exists(campaign.labelled):
        view = storage.read_json(campaign.labelled)
        if sorted(int(im["id"]) for im in view["images"]) != sorted(images):
            out.append("labelled.json does not hold the labelled images")
    if expected is not None:
        have = annotations_by_image(dataset)
        for image in sorted(images):
            if have.get(image, []) != sorted(expected.get(image, [])):
                out.append(f"labelled image {image} has other annotations than expected")
    return out


def _curve(campaign: Campaign, ledger: Ledger) -> list[str]:
    out = []
    numbers = sorted(r["round"] for r in ledger.rounds)
    if numbers != list(range(len(numbers))):
        out.append(f"rounds are not numbered 0..{len(numbers) - 1}: {numbers}")
    points = curve_of(ledger)
    if len({p["round"] for p in points}) != len(points):
        out.append("the learning curve has two points for a round")
    for record in ledger.rounds:
        if record["state"] not in ("exported", "closed"):
            continue
        if not record.get("metrics"):
            out.append(f"round {record['round']} is {record['state']} without metrics")
            continue
        uri = storage.join(campaign.round_dir(record["round"]), "metrics.json")
        if not storage.exists(uri):
            out.append(f"round {record['round']}'s metrics.json is missing")
        elif storage.read_json(uri) != _jsonable(round_metrics(ledger, record["round"])):
            out.append(f"round {record['round']}'s metrics.json is not its winning run's")
    return out


def _withdrawn(campaign: Campaign, ledger: Ledger) -> list[str]:
    if not ledger.withdrawn:
        return []
    out = []
    files = storage.list_uris(campaign.file("labels/")) + (
        [campaign.labelled] if storage.exists(campaign.labelled) else []
    )
    for uri, data in storage.iter_many(files, missing_ok=True):
        try:
            document = json.loads(data) if data is not None else {}
            held = sorted({int(im["id"]) for im in document.get("images", [])} & ledger.withdrawn)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # gone meanwhile, or not a label file: the other checks name what is damaged
        if held:
            out.append(f"{uri} holds withdrawn images {held[:10]}")
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))
