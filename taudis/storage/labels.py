"""Labels in: validate annotators' COCO annotations, merge them into the labelled dataset, update the ledger.

The campaign's labelled dataset is one COCO instance JSON (in the bucket or local). Layout::

    {
      "info": {"description": str, "taudis": {"ingested_ops": [str, ...]}},
      "licenses": [],
      "images": [{"id", "file_name", "height", "width", ...}, ...],
      "annotations": [{"id", "image_id", "category_id", "segmentation" (polygons or RLE),
                       "area", "bbox" [x, y, w, h], "iscrowd"}, ...],   # ids renumbered on merge
      "categories": [{"id", "name", ...}, ...]
    }

An ingest is one op (default id ``ingest:<sha256 of the labels file>``): first the labelled dataset
is rewritten by compare-and-swap with the op id in ``info.taudis.ingested_ops``, then the ledger
moves the images from pending to labelled under the same op id. A retry after a failure anywhere
skips what already landed, so a retried ingest is applied once. Validation comes before any
write: a bad file changes neither the dataset nor the ledger.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeGuard

from pycocotools import mask as mask_utils

from taudis.data.labels import LabelProblem, LabelValidationError
from taudis.storage import uri as storage
from taudis.storage.ledger import Ledger, mark_labelled, read_ledger

EDGE_TOLERANCE = 1.0  # pixels: polygons and boxes may touch the border, with rounding


# ---------------------------------------------------------------------------------- RLE checks


def decode_counts_string(counts: str) -> list[int]:
    """Run lengths of a COCO compressed RLE string (the format pycocotools writes).

    Each count is a little-endian sequence of 6-bit characters (offset 48): 5 value bits and a
    continuation bit; the last character's top value bit is the sign; from the third count on,
    a count is stored as its difference to the count two places before.

    Raises:
        ValueError: a character outside the alphabet, or a count cut off at the end.
    """
    values: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("string ends inside a count")
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {counts[position]!r} at {position} is outside the RLE alphabet")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return values


def _rle_problem(segmentation: Mapping[str, Any], height: int, width: int) -> tuple[str, str] | None:
    """(field, message) of the first problem of an RLE segmentation, or None."""
    size = segmentation.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        return "segmentation.size", f"expected [height, width], got {size!r}"
    if size != [height, width]:
        return "segmentation.size", f"RLE size {size} differs from the image's [{height}, {width}]: outside the image"
    counts = segmentation.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            return "segmentation.counts", "uncompressed RLE counts must be integers"
        runs = counts
    elif isinstance(counts, str):
        try:
            runs = decode_counts_string(counts)
        except ValueError as err:
            return "segmentation.counts", f"malformed compressed RLE: {err}"
    else:
        return "segmentation.counts", f"expected a string or a list of integers, got {type(counts).__name__}"
    if any(v < 0 for v in runs):
        return "segmentation.counts", "malformed RLE: a negative run length"
    if sum(runs) != height * width:
        return "segmentation.counts", f"malformed RLE: runs cover {sum(runs)} pixels, the image has {height * width}"
    return None


def _polygon_problem(segmentation: list[Any], height: int, width: int) -> tuple[str, str] | None:
    if not segmentation:
        return "segmentation", "empty polygon list"
    for index, polygon in enumerate(segmentation):
        field = f"segmentation[{index}]"
        if not isinstance(polygon, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in polygon
        ):
            return field, "a polygon must be a list of finite numbers"
        if len(polygon) < 6 or len(polygon) % 2:
            return field, f"a polygon needs an even number (>= 6) of coordinates, got {len(polygon)}"
        xs, ys = polygon[0::2], polygon[1::2]
        if min(xs) < -EDGE_TOLERANCE or max(xs) > width + EDGE_TOLERANCE:
            return field, f"x outside the image (0..{width}): {min(xs)}..{max(xs)}"
        if min(ys) < -EDGE_TOLERANCE or max(ys) > height + EDGE_TOLERANCE:
            return field, f"y outside the image (0..{height}): {min(ys)}..{max(ys)}"
    return None


def segmentation_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """The compressed RLE (pycocotools form, counts as bytes) of a valid polygon or RLE segmentation."""
    if isinstance(segmentation, list):
        return dict(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return dict(mask_utils.frPyObjects(dict(segmentation), height, width))
    return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


# ---------------------------------------------------------------------------------- validation


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_problems(doc: Mapping[str, Any], file: str, ledger: Ledger, dataset_images: set[int]) -> list[LabelProblem]:
    problems = []
    pool = set(ledger.pool)
    seen: set[int] = set()
    for index, image in enumerate(doc["images"]):
        record = f"image id {image.get('id') if isinstance(image, dict) else '?'} (index {index})"

        def add(field: str, message: str, record: str = record) -> None:
            problems.append(LabelProblem(file, record, field, message))

        if not isinstance(image, dict):
            add("images", "not an object")
            continue
        image_id = image.get("id")
        if not _is_int(image_id):
            add("id", f"expected an integer image id, got {image_id!r}")
            continue
        if image_id in seen:
            add("id", "image listed twice")
        seen.add(image_id)
        if image_id not in pool:
            add("id", "unknown image: not in the campaign's pool")
        elif image_id in dataset_images:
            add("id", "image is already in the labelled dataset")
        elif image_id not in ledger.pending:
            state = "labelled" if image_id in ledger.labelled else "unlabelled (never sent to annotators)"
            add("id", f"image is not pending: it is {state}")
        for key in ("height", "width"):
            if not _is_int(image.get(key)) or image[key] <= 0:
                add(key, f"expected a positive integer, got {image.get(key)!r}")
        if not isinstance(image.get("file_name"), str):
            add("file_name", "missing or not a string")
    return problems


def _annotation_problems(
    doc: Mapping[str, Any], file: str, images: Mapping[int, Mapping[str, Any]], category_ids: set[int]
) -> list[LabelProblem]:
    problems = []
    ids_seen: dict[int, int] = {}
    masks_seen: dict[tuple[int, int, bytes], Any] = {}
    for index, ann in enumerate(doc["annotations"]):
        record = f"annotation id {ann.get('id') if isinstance(ann, dict) else '?'} (index {index})"

        def add(field: str, message: str, record: str = record) -> None:
            problems.append(LabelProblem(file, record, field, message))

        if not isinstance(ann, dict):
            add("annotations", "not an object")
            continue
        ann_id = ann.get("id")
        if not _is_int(ann_id):
            add("id", f"expected an integer annotation id, got {ann_id!r}")
        elif ann_id in ids_seen:
            add("id", f"duplicate annotation id (also at index {ids_seen[ann_id]})")
        else:
            ids_seen[ann_id] = index
        image = images.get(ann["image_id"]) if _is_int(ann.get("image_id")) else None
        if image is None:
            add(
                "image_id",
                f"unknown image {ann.get('image_id')!r}: not among the file's images with a valid height and width",
            )
            continue
        category = ann.get("category_id")
        if not _is_int(category) or category not in category_ids:
            add("category_id", f"unknown category {category!r} (known: {sorted(category_ids)})")
        if ann.get("iscrowd", 0) not in (0, 1):
            add("iscrowd", f"expected 0 or 1, got {ann.get('iscrowd')!r}")
        height, width = int(image["height"]), int(image["width"])
        bbox = ann.get("bbox")
        if bbox is not None:
            if not (
                isinstance(bbox, list)
                and len(bbox) == 4
                and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
            ):
                add("bbox", f"expected [x, y, width, height] numbers, got {bbox!r}")
            elif bbox[2] < 0 or bbox[3] < 0:
                add("bbox", f"negative width or height: {bbox}")
            elif (
                bbox[0] < -EDGE_TOLERANCE
                or bbox[1] < -EDGE_TOLERANCE
                or bbox[0] + bbox[2] > width + EDGE_TOLERANCE
                or bbox[1] + bbox[3] > height + EDGE_TOLERANCE
            ):
                add("bbox", f"box {bbox} is outside the image ({width}x{height})")
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, dict):
            problem = _rle_problem(segmentation, height, width)
        elif isinstance(segmentation, list):
            problem = _polygon_problem(segmentation, height, width)
        else:
            problem = ("segmentation", f"expected polygons (list) or RLE (object), got {type(segmentation).__name__}")
        if problem is not None:
            add(*problem)
            continue
        rle = segmentation_rle(segmentation, height, width)
        if int(mask_utils.area(rle)) == 0:
            add("segmentation", "the mask is empty (no pixel inside the image)")
            continue
        key = (int(ann["image_id"]), int(category) if _is_int(category) else -1, bytes(rle["counts"]))
        if key in masks_seen:
            add("segmentation", f"duplicate annotation: same image, category and mask as annotation {masks_seen[key]}")
        else:
            masks_seen[key] = ann_id
    return problems


def validate_labels(
    doc: Any,
    file: str,
    ledger: Ledger,
    dataset: Mapping[str, Any] | None,
    categories: Sequence[Mapping[str, Any]] | None = None,
    pool_images: Mapping[int, Mapping[str, Any]] | None = None,
) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """Check a labels document against the ledger and the labelled dataset (and the pool, if given).

    Rules: the document is a COCO object with ``images`` and ``annotations`` lists; every image
    is in the pool, pending in the ledger, not yet in the labelled dataset, with positive integer
    height and width; every annotation has a unique integer id, an image of the file, a known
    category (the dataset's; before the dataset exists, ``categories`` or else the file's; a
    category the file lists must have the same name as the known one of its id), a well-formed
    RLE (size equal to the image's, runs covering it exactly) or polygons (>= 3 points, inside
    the image within EDGE_TOLERANCE px), a box inside the image if given, a non-empty mask, and
    no other annotation of the same image and category with the same mask. With ``pool_images``
    (the pool's image records by id), every image must have the pool's height and width, and the
    returned records are the pool's: annotation tools often rewrite file names, and training
    finds the images by the pool's.

    Returns:
        The images by id and the annotations (copies), when valid.

    Raises:
        LabelValidationError: listing every problem, each naming the file, record and field.
    """
    if not isinstance(doc, dict):
        raise LabelValidationError([LabelProblem(file, "document", "", "expected a COCO JSON object")])
    missing = [
        LabelProblem(file, "document", key, "missing or not a list")
        for key in ("images", "annotations")
        if not isinstance(doc.get(key), list)
    ]
    if missing:
        raise LabelValidationError(missing)
    reference = _reference_categories(doc, dataset, categories)
    category_ids = {c["id"] for c in reference if isinstance(c, dict) and _is_int(c.get("id"))}
    if isinstance(doc.get("categories"), list):
        known = {c["id"]: c.get("name") for c in reference if isinstance(c, dict)}
        for index, cat in enumerate(doc["categories"]):
            if isinstance(cat, dict) and cat.get("id") in known and cat.get("name") != known[cat.get("id")]:
                raise LabelValidationError(
                    [
                        LabelProblem(
                            file,
                            f"category id {cat.get('id')} (index {index})",
                            "name",
                            f"name {cat.get('name')!r} differs from the dataset's {known[cat.get('id')]!r}",
                        )
                    ]
                )
    dataset_images = {int(im["id"]) for im in (dataset or {}).get("images", [])}
    problems = _image_problems(doc, file, ledger, dataset_images)
    images = {im["id"]: im for im in doc["images"] if isinstance(im, dict) and _is_int(im.get("id"))}
    if pool_images is not None:
        problems += _size_problems(doc["images"], file, pool_images)
    sized = {
        k: v
        for k, v in images.items()
        if _is_int(v.get("height")) and _is_int(v.get("width")) and v["height"] > 0 and v["width"] > 0
    }
    problems += _annotation_problems(doc, file, sized, category_ids)
    if problems:
        raise LabelValidationError(problems)
    records = images if pool_images is None else {k: pool_images[k] for k in images}
    return {k: dict(v) for k, v in records.items()}, [dict(a) for a in doc["annotations"]]


def _size_problems(
    images: Sequence[Any], file: str, pool_images: Mapping[int, Mapping[str, Any]]
) -> list[LabelProblem]:
    """An image whose size differs from the pool's has its masks in other coordinates."""
    problems = []
    for index, image in enumerate(images):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            continue  # reported by _image_problems
        image_id = image["id"]
        pool_image = pool_images.get(image_id)
        if pool_image is None:
            problems.append(LabelProblem(file, f"image id {image_id} (index {index})", "id", "not in the pool file"))
            continue
        for key in ("height", "width"):
            if image.get(key) != pool_image.get(key):
                problems.append(
                    LabelProblem(
                        file,
                        f"image id {image_id} (index {index})",
                        key,
                        f"{image.get(key)!r} here but {pool_image.get(key)!r} in the pool",
                    )
                )
    return problems


# ------------------------------------------------------------------------------------- merging


def _reference_categories(
    doc: Mapping[str, Any], dataset: Mapping[str, Any] | None, categories: Sequence[Mapping[str, Any]] | None
) -> list[Mapping[str, Any]]:
    """The categories annotations must use: the dataset's, else the given ones, else the file's."""
    if dataset is not None:
        return list(dataset.get("categories") or [])
    if categories is not None:
        return list(categories)
    return list(doc.get("categories") or [])


def _empty_dataset(categories: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "info": {"description": "taudis labelled dataset", "taudis": {"ingested_ops": []}},
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": [dict(c) for c in categories],
    }


def _ingested_ops(dataset: Mapping[str, Any]) -> list[str]:
    return list(dataset.get("info", {}).get("taudis", {}).get("ingested_ops", []))


def _merge(
    dataset: dict[str, Any],
    images: Mapping[int, Mapping[str, Any]],
    annotations: Sequence[Mapping[str, Any]],
    op_id: str,
) -> dict[str, Any]:
    merged = dict(dataset)
    next_id = max((int(a["id"]) for a in dataset["annotations"]), default=0) + 1
    new_annotations = []
    for ann in annotations:
        image = images[ann["image_id"]]
        rle = segmentation_rle(ann["segmentation"], int(image["height"]), int(image["width"]))
        segmentation = ann["segmentation"]
        if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), bytes):
            segmentation = {"size": segmentation["size"], "counts": segmentation["counts"].decode("ascii")}
        new_annotations.append(
            {
                "id": next_id,
                "image_id": int(ann["image_id"]),
                "category_id": int(ann["category_id"]),
                "segmentation": segmentation,
                "area": float(ann.get("area") or mask_utils.area(rle)),
                "bbox": [float(v) for v in (ann.get("bbox") or mask_utils.toBbox(rle).tolist())],
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
        )
        next_id += 1
    merged["images"] = [*dataset["images"], *(dict(images[k]) for k in sorted(images))]
    merged["annotations"] = [*dataset["annotations"], *new_annotations]
    info = dict(dataset.get("info", {}))
    info["taudis"] = {**info.get("taudis", {}), "ingested_ops": [*_ingested_ops(dataset), op_id]}
    merged["info"] = info
    return merged


def _ingest(
    doc: Any,
    file: str,
    ledger_uri: str,
    dataset_uri: str,
    op_id: str,
    categories: Sequence[Mapping[str, Any]] | None = None,
    pool_images: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    summary: dict[str, Any] = {"op_id": op_id, "ledger": ledger_uri, "dataset": dataset_uri, "labels": file}
    ledger = read_ledger(ledger_uri)
    if ledger.has_op(op_id):
        return {**summary, "already_applied": True, "images": 0, "annotations": 0}
    annotation_count = 0
    while True:
        versioned = storage.read_versioned(dataset_uri)
        dataset = None if versioned is None else _parse_dataset(versioned.data, dataset_uri)
        if dataset is not None and op_id in _ingested_ops(dataset):
            # The dataset write of an earlier attempt landed; only the ledger is left to do.
            image_ids = _image_ids_of(doc)
            break
        images, annotations = validate_labels(doc, file, ledger, dataset, categories, pool_images)
        base = dataset if dataset is not None else _empty_dataset(_reference_categories(doc, None, categories))
        merged = _merge(base, images, annotations, op_id)
        generation = 0 if versioned is None else versioned.generation
        try:
            storage.write_if_generation(dataset_uri, storage.dumps_json(merged), generation)
        except storage.PreconditionFailedError:
            ledger = read_ledger(ledger_uri)  # another writer won: validate again on the new state
            continue
        image_ids, annotation_count = sorted(images), len(annotations)
        break
    mark_labelled(ledger_uri, image_ids, op_id=op_id)
    return {**summary, "already_applied": False, "images": len(image_ids), "annotations": annotation_count}


def _parse_dataset(data: bytes, uri: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise storage.StorageError(f"labelled dataset {uri}: not valid JSON: {err}") from err


def _image_ids_of(doc: Mapping[str, Any]) -> list[int]:
    return sorted(int(im["id"]) for im in doc["images"])


def ingest_labels(
    labels_uri: str | os.PathLike[str],
    ledger_uri: str | os.PathLike[str],
    labelled_dataset_uri: str | os.PathLike[str],
    *,
    op_id: str | None = None,
    pool_uri: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Ingest annotators' COCO labels for pending images.

    Validates the file (see ``validate_labels``), merges its images and annotations into the
    labelled dataset (annotation ids renumbered after the dataset's largest), then marks the
    images labelled in the ledger. Images listed without annotations count as labelled with no
    instance.

    Args:
        labels_uri: the annotators' COCO JSON.
        ledger_uri: the campaign's ledger.
        labelled_dataset_uri: the campaign's labelled COCO dataset (created on first ingest,
            with the categories of ``pool_uri``, else of the labels file).
        op_id: the idempotence key (default ``ingest:<sha256 of the file>``).
        pool_uri: the pool's COCO JSON. Its categories are the ones the labels must use while the
            labelled dataset does not exist yet; its image records (file name, size) are checked
            against the labels' and merged in their place.

    Returns:
        A summary: op_id, images, annotations, already_applied, and the URIs.

    Raises:
        LabelValidationError: the file breaks a rule; nothing was written.
    """
    labels_uri, ledger_uri, dataset_uri = str(labels_uri), str(ledger_uri), str(labelled_dataset_uri)
    data = storage.read_bytes(labels_uri)
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LabelValidationError([LabelProblem(labels_uri, "document", "", f"not valid JSON: {err}")]) from err
    op = op_id or f"ingest:{hashlib.sha256(data).hexdigest()[:16]}"
    if pool_uri is None:
        return _ingest(doc, labels_uri, ledger_uri, dataset_uri, op)
    pool = storage.read_json(pool_uri)
    pool_images = {im["id"]: im for im in pool.get("images", []) if isinstance(im, dict) and "id" in im}
    return _ingest(doc, labels_uri, ledger_uri, dataset_uri, op, list(pool.get("categories", [])), pool_images)


def reveal_oracle_labels(
    pool_annotations_uri: str | os.PathLike[str],
    image_ids: Iterable[int] | None,
    ledger_uri: str | os.PathLike[str],
    labelled_dataset_uri: str | os.PathLike[str],
    *,
    op_id: str | None = None,
) -> dict[str, Any]:
    """Simulation: take the labels of pending images from the fully labelled pool.

    Args:
        pool_annotations_uri: the pool's ground-truth COCO JSON.
        image_ids: which images to reveal (default: every pending image of the ledger).
        ledger_uri: the campaign's ledger.
        labelled_dataset_uri: the campaign's labelled COCO dataset.
        op_id: the idempotence key (default ``oracle:<sha256 of the sorted image ids>``).

    Returns:
        The summary of ``ingest_labels``.
    """
    pool_uri = str(pool_annotations_uri)
    pool = storage.read_json(pool_uri)
    ids = sorted(read_ledger(str(ledger_uri)).pending) if image_ids is None else sorted(int(i) for i in image_ids)
    wanted = set(ids)
    doc = {
        "images": [im for im in pool.get("images", []) if im.get("id") in wanted],
        "annotations": [a for a in pool.get("annotations", []) if a.get("image_id") in wanted],
        "categories": pool.get("categories", []),
    }
    found = {im["id"] for im in doc["images"]}
    if found != wanted:
        missing = sorted(wanted - found)[:10]
        raise LabelValidationError(
            [LabelProblem(pool_uri, f"image ids {missing}", "images", "not in the pool annotations")]
        )
    op = op_id or f"oracle:{hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]}"
    return _ingest(doc, pool_uri, str(ledger_uri), str(labelled_dataset_uri), op, doc["categories"])


# ------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``taudis ingest``: ingest annotators' labels (or, for simulation, the oracle's)."""
    parser = argparse.ArgumentParser(prog="taudis ingest", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("labels", nargs="?", help="annotators' COCO JSON (gs:// or local)")
    source.add_argument("--oracle", metavar="POOL_ANNOTATIONS", help="reveal labels from the pool's ground truth")
    parser.add_argument("--ledger", required=True, help="the campaign's ledger URI")
    parser.add_argument("--dataset", required=True, help="the campaign's labelled COCO dataset URI")
    parser.add_argument("--images", help="oracle only: comma-separated image ids (default: every pending image)")
    parser.add_argument(
        "--pool", help="the pool's COCO JSON: categories to use, image sizes to check, file names to keep"
    )
    parser.add_argument("--op-id", help="idempotence key (default: derived from the input)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.oracle:
            ids = [int(v) for v in args.images.split(",") if v.strip()] if args.images else None
            summary = reveal_oracle_labels(args.oracle, ids, args.ledger, args.dataset, op_id=args.op_id)
        else:
            summary = ingest_labels(args.labels, args.ledger, args.dataset, op_id=args.op_id, pool_uri=args.pool)
    except (LabelValidationError, storage.StorageError, ValueError) as err:
        print(f"taudis ingest: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    return 0
