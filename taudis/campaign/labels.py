"""The campaign's labels: immutable label parts, the labelled dataset they make, and the oracle.

A label part is one COCO file under ``<campaign>/labels/`` holding the annotations of a set of
images, in pool ids and the campaign's category ids; the ledger lists the parts (LabelPart), and
the union of their images is the labelled set. A part is written before the ledger update that
lists it, and never changed, so the labels and the ledger cannot disagree: a part the ledger
does not list (its update lost or never made) is ignored.

Part layout::

    {"info": {"taudis": {"op_id", "source"}}, "images": [pool image records],
     "annotations": [{"id" (1..N), "image_id", "category_id", "segmentation" (polygons or RLE with
                      counts as str), "area", "bbox", "iscrowd"}],
     "categories": the campaign's categories}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pycocotools import mask as mask_utils

from taudis import storage
from taudis.campaign.layout import Campaign
from taudis.data.labels import bbox_problem, rle_json, segmentation_problem, segmentation_rle
from taudis.storage.ledger import LabelPart, Ledger, LedgerError, read_ledger, update_ledger

log = logging.getLogger(__name__)


def part_document(
    images: Sequence[Mapping[str, Any]],
    annotations: Sequence[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    *,
    op_id: str,
    source: str,
) -> dict[str, Any]:
    """A label part's COCO document: annotations renumbered 1..N, each with area and bbox."""
    by_id = {int(image["id"]): image for image in images}
    out = []
    for index, ann in enumerate(annotations, start=1):
        image = by_id[int(ann["image_id"])]
        rle = segmentation_rle(ann["segmentation"], int(image["height"]), int(image["width"]))
        segmentation = ann["segmentation"] if isinstance(ann["segmentation"], list) else rle_json(rle)
        out.append(
            {
                "id": index,
                "image_id": int(ann["image_id"]),
                "category_id": int(ann["category_id"]),
                "segmentation": segmentation,
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in (ann.get("bbox") or mask_utils.toBbox(rle).tolist())],
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
        )
    return {
        "info": {"taudis": {"op_id": op_id, "source": source}},
        "images": [dict(by_id[k]) for k in sorted(by_id)],
        "annotations": out,
        "categories": [dict(c) for c in categories],
    }


def write_part(campaign: Campaign, document: Mapping[str, Any], *, op_id: str, source: str) -> LabelPart:
    """Write a part document under labels/ (named by its content; written once) and return its LabelPart."""
    data = storage.dumps_json(document)
    kind = op_id.split(":", 1)[0]
    name = f"labels/{kind}-{hashlib.sha256(data).hexdigest()[:16]}.json"
    storage.write_once(campaign.file(name), data)
    return LabelPart(
        op_id=op_id, name=name, images=frozenset(int(im["id"]) for im in document["images"]), source=source
    )


def add_part(campaign: Campaign, part: LabelPart) -> Ledger:
    """List a part in the ledger: its images move from pending to labelled (once per op id).

    Raises:
        LedgerError: an image of the part is not pending (labelled meanwhile, or never chosen).
    """

    def apply(ledger: Ledger) -> Ledger:
        not_pending = sorted(part.images - ledger.pending)
        if not_pending:
            raise LedgerError(ledger.uri, f"images {not_pending[:10]} are not pending", field="pending")
        return dataclasses.replace(ledger, pending=ledger.pending - part.images, parts=(*ledger.parts, part))

    return update_ledger(campaign.ledger, part.op_id, apply, kind="add_label_part")


def part_without(campaign: Campaign, part: LabelPart, images: Iterable[int], *, op_id: str) -> LabelPart | None:
    """``part`` less ``images``: a new part (written once, its source kept), or None when nothing is left."""
    drop = set(images)
    document = read_part(campaign, part)
    kept = [im for im in document["images"] if int(im["id"]) not in drop]
    if not kept:
        return None
    annotations = [a for a in document["annotations"] if int(a["image_id"]) not in drop]
    rest = part_document(kept, annotations, document["categories"], op_id=op_id, source=part.source)
    return write_part(campaign, rest, op_id=op_id, source=part.source)


def replace_labels(campaign: Campaign, part: LabelPart, remainders: Mapping[str, LabelPart | None]) -> Ledger:
    """List a correction part in one ledger update: its labelled images leave the parts that held
    them, its pending images become labelled.

    Parts are immutable, so each part holding a corrected image gives way to its remainder
    (``remainders``: that part's op id -> :func:`part_without` of it, written beforehand; None when
    nothing is left). The parts stay disjoint, and the labels they replace stay in storage.

    Raises:
        LedgerError: field "parts" when the parts holding the images are no longer those the
            remainders were made from (the ledger changed meanwhile: make them again); field
            "pending" when an image is neither labelled nor pending.
    """

    def apply(ledger: Ledger) -> Ledger:
        replaced = part.images & ledger.labelled
        holders = {p.op_id: p for p in ledger.parts if p.images & replaced}
        stale = set(holders) != set(remainders) or any(
            (rest.images if rest is not None else frozenset()) != holders[op].images - part.images
            for op, rest in remainders.items()
        )
        if stale:
            raise LedgerError(ledger.uri, "the label parts changed while a correction was made", field="parts")
        unknown = sorted(part.images - ledger.labelled - ledger.pending)
        if unknown:
            raise LedgerError(ledger.uri, f"images {unknown[:10]} are neither labelled nor pending", field="pending")
        kept = tuple(q for p in ledger.parts if (q := remainders[p.op_id] if p.op_id in holders else p) is not None)
        return dataclasses.replace(ledger, pending=ledger.pending - part.images, parts=(*kept, part))

    return update_ledger(campaign.ledger, part.op_id, apply, kind="replace_labels")


def read_part(campaign: Campaign, part: LabelPart) -> dict[str, Any]:
    """A part's COCO document.

    Raises:
        LedgerError: the part file is missing, or holds other images than the ledger says.
    """
    return read_parts(campaign, [part])[0]


def read_parts(campaign: Campaign, parts: Sequence[LabelPart]) -> list[dict[str, Any]]:
    """The parts' COCO documents, in order, read at once (a campaign of a year holds thousands).

    Raises:
        LedgerError: a part file is missing, or holds other images than the ledger says.
    """
    datas = storage.read_many([campaign.file(part.name) for part in parts], missing_ok=True)
    return [_part_document(campaign, part, data) for part, data in zip(parts, datas, strict=True)]


def _part_document(campaign: Campaign, part: LabelPart, data: bytes | None) -> dict[str, Any]:
    uri = campaign.file(part.name)
    if data is None:
        raise LedgerError(campaign.ledger, f"label part {part.name} is missing ({uri})", field="parts")
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        # parts are written whole, once: a damaged one was changed by hand or by a bucket tool
        message = f"label part {part.name} ({uri}) is not the JSON taudis wrote ({err}): restore it from a backup"
        raise LedgerError(campaign.ledger, message, field="parts") from err
    images = {int(im["id"]) for im in document.get("images", [])}
    if images != set(part.images):
        raise LedgerError(campaign.ledger, f"label part {part.name} holds other images than listed", field="parts")
    return dict(document)


def labelled_dataset(campaign: Campaign, ledger: Ledger | None = None) -> dict[str, Any]:
    """The labelled COCO dataset: every part the ledger lists, annotation ids renumbered 1..N.

    Layout: {"info": {"description", "taudis": {"ledger_revision", "parts": [names]}}, "licenses": [],
    "images", "annotations", "categories"} with images sorted by id.
    """
    if ledger is None:
        return _newest_dataset(campaign, read_ledger(campaign.ledger))[0]
    return _dataset(campaign, ledger)


def _newest_dataset(campaign: Campaign, ledger: Ledger) -> tuple[dict[str, Any], Ledger]:
    """The dataset of ``ledger``, or of the newer ledger when a part it lists was rewritten meanwhile."""
    try:
        return _dataset(campaign, ledger), ledger
    except LedgerError:
        fresh = read_ledger(campaign.ledger)
        if fresh.revision == ledger.revision:
            raise
        # A withdrawal rewrites the parts it replaced once the ledger no longer lists them,
        # which a ledger read just before it still did: the newer ledger's parts are whole.
        return _dataset(campaign, fresh), fresh


def publish_labelled(campaign: Campaign, ledger: Ledger | None = None) -> tuple[dict[str, Any], Ledger]:
    """Write ``<campaign>/labelled.json`` from the ledger, and return it with the ledger it shows.

    Several writers publish the view (a round's ingest, ``taudis campaign ingest``, a withdrawal),
    each from the ledger it read. A writer whose ledger changed under it (a withdrawal landed
    between its read and its write) may have overwritten a newer view with an older one, so each
    reads the ledger again after its write and writes again until the two agree. Whichever writer
    writes last then read a ledger at least as new as every change before it: labelled.json never
    keeps a withdrawn image, nor lacks a part, once its writers are done.
    """
    ledger = ledger or read_ledger(campaign.ledger)
    while True:
        dataset, ledger = _newest_dataset(campaign, ledger)
        storage.write_json(campaign.labelled, dataset)
        fresh = read_ledger(campaign.ledger)
        if (fresh.parts, fresh.withdrawn) == (ledger.parts, ledger.withdrawn):
            return dataset, ledger
        log.info("%s: the ledger changed while labelled.json was written: writing it again", campaign.labelled)
        ledger = fresh


def _dataset(campaign: Campaign, ledger: Ledger) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    # Every part carries the pool file's categories of its day; a category added to the pool
    # file later is in the later parts only, so the dataset takes them all (the newest wins).
    categories: dict[int, dict[str, Any]] = {}
    for document in read_parts(campaign, ledger.parts):
        categories.update((int(c["id"]), c) for c in document.get("categories", []))
        images += document["images"]
        for ann in document["annotations"]:
            annotations.append({**ann, "id": len(annotations) + 1})
    images.sort(key=lambda im: int(im["id"]))
    return {
        "info": {
            "description": "taudis labelled dataset",
            "taudis": {"ledger_revision": ledger.revision, "parts": [p.name for p in ledger.parts]},
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [categories[k] for k in sorted(categories)],
    }


def known_file_names(campaign: Campaign, ledger: Ledger | None = None) -> dict[int, str]:
    """Image id -> file name of every labelled and pending image: the names the campaign has tied to ids."""
    return {image_id: str(image["file_name"]) for image_id, image in known_images(campaign, ledger).items()}


def known_images(campaign: Campaign, ledger: Ledger | None = None) -> dict[int, dict[str, Any]]:
    """Image id -> image record of every labelled image (from its label part) and pending image (from
    its round's task manifest)."""
    ledger = ledger or read_ledger(campaign.ledger)
    known = {int(im["id"]): dict(im) for im in labelled_dataset(campaign, ledger)["images"]}
    return known | sent_images(campaign, ledger, ledger.pending)


def sent_images(campaign: Campaign, ledger: Ledger, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Image id -> {"id", "file_name", "height", "width"} as the task manifest of the published round
    that chose it has it (the record the annotators were sent), for those of ``ids`` sent out."""
    waiting, found = set(ids), {}
    for record in ledger.rounds:
        if not waiting & set(record.get("images", [])) or record["state"] not in ("exported", "closed"):
            continue
        uri = storage.join(campaign.round_dir(record["round"]), "tasks", "manifest.jsonl")
        for line in storage.read_text(uri).splitlines() if storage.exists(uri) else []:
            row = json.loads(line) if line.strip() else {}
            if int(row.get("image_id", -1)) in waiting and {"file_name", "height", "width"} <= set(row):
                image_id = int(row["image_id"])
                found[image_id] = {"id": image_id, **{k: row[k] for k in ("file_name", "height", "width")}}
    return found


def annotations_by_image(document: Mapping[str, Any]) -> dict[int, list[tuple[int, str]]]:
    """Each image's annotations as sorted (category id, compressed RLE) pairs: what "identical" compares."""
    images = {int(im["id"]): im for im in document["images"]}
    out: dict[int, list[tuple[int, str]]] = {image_id: [] for image_id in images}
    for ann in document["annotations"]:
        image = images[int(ann["image_id"])]
        rle = segmentation_rle(ann["segmentation"], int(image["height"]), int(image["width"]))
        out[int(ann["image_id"])].append((int(ann["category_id"]), rle_json(rle)["counts"]))
    return {k: sorted(v) for k, v in out.items()}


def labelled_annotations(
    campaign: Campaign, ledger: Ledger, image_ids: Iterable[int]
) -> dict[int, list[tuple[int, str]]]:
    """annotations_by_image of labelled images, read from the parts that hold them."""
    wanted = set(image_ids)
    out: dict[int, list[tuple[int, str]]] = {}
    for document in read_parts(campaign, [part for part in ledger.parts if part.images & wanted]):
        found = annotations_by_image(document)
        out.update({k: v for k, v in found.items() if k in wanted})
    return out


# ----------------------------------------------------------------------------------------- oracle


def reveal_oracle_labels(
    campaign: Campaign, pool: Mapping[str, Any], image_ids: Iterable[int] | None = None
) -> dict[str, Any]:
    """Simulation: label pending images with their ground truth from the fully labelled pool.

    Ground-truth annotations that no annotator could submit (a degenerate polygon, an empty mask)
    are left out and counted, as an annotator's tool would have refused them.

    Returns:
        {"images", "annotations", "dropped"}: what was revealed (zeros when nothing was pending).
    """
    ledger = read_ledger(campaign.ledger)
    wanted = sorted(ledger.pending if image_ids is None else set(image_ids) & ledger.pending)
    if not wanted:
        return {"images": 0, "annotations": 0, "dropped": 0}
    keep = set(wanted)
    images = [im for im in pool["images"] if int(im["id"]) in keep]
    missing = keep - {int(im["id"]) for im in images}
    if missing:
        raise LedgerError(
            campaign.ledger, f"pending images {sorted(missing)[:10]} are not in the pool file", field="pending"
        )
    sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in images}
    annotations, dropped = [], 0
    for ann in pool.get("annotations", []):
        if int(ann["image_id"]) not in keep:
            continue
        height, width = sizes[int(ann["image_id"])]
        bad = segmentation_problem(ann.get("segmentation"), height, width) or (
            bbox_problem(ann["bbox"], height, width) if ann.get("bbox") is not None else None
        )
        if bad is None and mask_utils.area(segmentation_rle(ann["segmentation"], height, width)) > 0:
            annotations.append(ann)
        else:
            dropped += 1
    if dropped:
        log.warning("oracle: left out %d ground-truth annotations that an annotator could not submit", dropped)
    op_id = f"oracle:{hashlib.sha256(json.dumps(wanted).encode()).hexdigest()[:16]}"
    document = part_document(images, annotations, pool["categories"], op_id=op_id, source="oracle")
    add_part(campaign, write_part(campaign, document, op_id=op_id, source="oracle"))
    return {"images": len(wanted), "annotations": len(annotations), "dropped": dropped}
