"""COCO both ways: the model's predictions as pre-annotations out, and a COCO labels file in."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeGuard, cast

from taudis.data.coco import size_advice
from taudis.data.labels import bbox_problem, rle_json, segmentation_problem, segmentation_rle
from taudis.labeling.predictions import Prediction
from taudis.labeling.toollabels import Problems, ToolAnnotation, ToolImage, ToolLabels, unreadable

PREANNOTATIONS_DESCRIPTION = "taudis pre-annotations"  # info.description of build_preannotations' documents


def build_preannotations(
    images: Sequence[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    predictions: Mapping[int, Sequence[Prediction]],
    *,
    description: str = PREANNOTATIONS_DESCRIPTION,
) -> dict[str, Any]:
    """A COCO instance document of the predictions.

    Layout::

        {"info": {"description"}, "licenses": [],
         "images": [{"id", "file_name", "height", "width", "coco_url" (if given)}, ...],   # selection order
         "categories": the pool's categories,
         "annotations": [{"id" (1..N), "image_id", "category_id", "segmentation" (RLE, counts str),
                          "area" (mask pixels), "bbox" [x0, y0, x1 - x0, y1 - y0] (the predicted box),
                          "iscrowd": 0, "score", "attributes": {"occluded": false, "score", "instance"}}, ...]}

    The boxes are the model's boxes, not the masks' extents, so a reader gets the prediction back.
    """
    annotations: list[dict[str, Any]] = []
    for image in images:
        for prediction in predictions.get(int(image["id"]), ()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": prediction.image_id,
                    "category_id": prediction.category_id,
                    "segmentation": dict(prediction.rle),
                    "area": float(prediction.area),
                    "bbox": prediction.bbox_xywh,
                    "iscrowd": 0,
                    "score": prediction.score,
                    "attributes": {"occluded": False, "score": prediction.score, "instance": prediction.instance},
                }
            )
    return {
        "info": {"description": description},
        "licenses": [],
        "images": [dict(image) for image in images],
        "categories": [dict(c) for c in categories],
        "annotations": annotations,
    }


# ------------------------------------------------------------------------------------ reading


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _keep_ref(file_name: str) -> str:
    return file_name


def read_coco_document(
    doc: Any,
    uri: str,
    *,
    fmt: str = "coco",
    ids_are_pool_ids: bool = True,
    ref: Callable[[str], str] = _keep_ref,
    record_prefix: str = "",
    sizes_optional: bool = False,
) -> ToolLabels:
    """Read a COCO instance document as the tool wrote it: images, instances and every problem.

    Categories are resolved to their names here, so nothing downstream sees a tool's numbers.
    Checked: the three lists exist; categories have unique integer ids and unique non-empty
    names; images have unique integer ids, a file name and positive integer sizes; every
    annotation names a listed image and category, has a valid segmentation on its image
    (``taudis.data.labels.segmentation_problem``; an empty one, as tools write rectangles, is no
    mask), a valid box if any, and iscrowd 0 or 1. RLE comes back compressed, counts as str.

    Args:
        doc: the parsed JSON.
        uri: the file, for problems.
        fmt: the format name to report (``coco``, ``cvat-coco``, ``labelstudio-coco``).
        ids_are_pool_ids: whether the file's image ids are meant to be the pool's.
        ref: normalises a file name into the image reference.
        record_prefix: put before each record (e.g. the archive member).
        sizes_optional: an image may state no size (``null``), as Label Studio's COCO export
            writes for images it could not open; the pool's size is then the one that counts.
    """
    problems = Problems(uri, record_prefix)
    if not isinstance(doc, dict):
        problems.add("document", "", "expected a COCO JSON object")
        return ToolLabels(uri, fmt, (), (), tuple(problems.items))
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            problems.add("document", key, "missing or not a list")
    if problems:
        return ToolLabels(uri, fmt, (), (), tuple(problems.items))
    names = _category_names(doc["categories"], problems)
    images = _images(doc["images"], problems, ref, ids_are_pool_ids, sizes_optional)
    annotations = _annotations(doc["annotations"], problems, images, names)
    return ToolLabels(uri, fmt, tuple(images.values()), tuple(annotations), tuple(problems.items))


def _category_names(categories: list[Any], problems: Problems) -> dict[int, str]:
    names: dict[int, str] = {}
    for index, category in enumerate(categories):
        record = f"category id {category.get('id') if isinstance(category, dict) else '?'} (index {index})"
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            problems.add(record, "id", "expected an object with an integer id")
            continue
        name = category.get("name")
        if not isinstance(name, str) or not name:
            problems.add(record, "name", f"expected a non-empty name, got {name!r}")
        elif category["id"] in names:
            problems.add(record, "id", "category id listed twice")
        elif name in names.values():
            problems.add(record, "name", f"{name!r} is also another category's name: categories match by name")
        else:
            names[category["id"]] = name
    return names


def _images(
    records: list[Any], problems: Problems, ref: Callable[[str], str], ids_are_pool_ids: bool, sizes_optional: bool
) -> dict[int, ToolImage]:
    """The valid images by id, in file order."""
    images: dict[int, ToolImage] = {}
    seen: set[int] = set()
    for index, image in enumerate(records):
        record = f"image id {image.get('id') if isinstance(image, dict) else '?'} (index {index})"
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            problems.add(record, "id", "expected an object with an integer id")
            continue
        before = len(problems)
        if image["id"] in seen:
            problems.add(record, "id", "image id listed twice")
        seen.add(image["id"])
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            problems.add(record, "file_name", f"expected the image's file name, got {image.get('file_name')!r}")
        unsized = sizes_optional and image.get("height") is None and image.get("width") is None
        for key in ("height", "width"):
            if not unsized and (not _is_int(image.get(key)) or image[key] <= 0):
                problems.add(record, key, f"expected a positive integer, got {size_advice(image.get(key))}")
        if len(problems) > before:
            images.pop(image["id"], None)  # an id listed twice names no image for sure
            continue
        images[image["id"]] = ToolImage(
            index=index,
            record=problems.prefix + record,
            ref=ref(image["file_name"]),
            tool_id=image["id"],
            pool_id=None,
            ids_are_pool_ids=ids_are_pool_ids,
            height=None if unsized else int(image["height"]),
            width=None if unsized else int(image["width"]),
        )
    return images


def _annotations(
    records: list[Any], problems: Problems, images: Mapping[int, ToolImage], names: Mapping[int, str]
) -> list[ToolAnnotation]:
    positions = {image_id: position for position, image_id in enumerate(images)}
    out: list[ToolAnnotation] = []
    for index, ann in enumerate(records):
        record = f"annotation id {ann.get('id') if isinstance(ann, dict) else '?'} (index {index})"
        if not isinstance(ann, dict):
            problems.add(record, "annotation", "not an object")
            continue
        before = len(problems)
        image_id = ann["image_id"] if _is_int(ann.get("image_id")) else -1
        image = images.get(image_id)
        if image is None:
            problems.add(record, "image_id", f"image {ann.get('image_id')!r} is not among the file's valid images")
        category = names.get(ann["category_id"]) if _is_int(ann.get("category_id")) else None
        if category is None:
            problems.add(record, "category_id", f"unknown category {ann.get('category_id')!r} (known: {sorted(names)})")
        if ann.get("iscrowd", 0) not in (0, 1):
            problems.add(record, "iscrowd", f"expected 0 or 1, got {ann.get('iscrowd')!r}")
        if image is None or category is None:
            continue
        height, width = int(image.height or 0), int(image.width or 0)
        segmentation = ann.get("segmentation")
        if segmentation == []:
            problems.add(record, "segmentation", "no mask (tools write a rectangle this way): draw the instance")
        else:
            problem = segmentation_problem(segmentation, height, width)
            if problem is not None:
                problems.add(record, *problem)
        if ann.get("bbox") is not None and (message := bbox_problem(ann["bbox"], height, width)) is not None:
            problems.add(record, "bbox", message)
        if len(problems) > before:
            continue
        if isinstance(segmentation, dict):
            segmentation = rle_json(segmentation_rle(segmentation, height, width))
        bbox = [float(v) for v in ann["bbox"]] if ann.get("bbox") is not None else None
        iscrowd = int(ann.get("iscrowd", 0))
        mask = cast(list[list[float]] | dict[str, Any], segmentation)  # segmentation_problem checked it
        out.append(ToolAnnotation(positions[image_id], problems.prefix + record, category, mask, bbox, iscrowd))
    return out


def is_preannotations(doc: Any) -> bool:
    """Whether a COCO document is taudis's own pre-annotations (``build_preannotations``), by its description.

    Its description, not its ``score`` keys, tells it: datumaro writes a ``score`` attribute back as
    the annotation's ``score``, so a CVAT export of corrected pre-annotations carries them too.
    """
    info = doc.get("info") if isinstance(doc, dict) else None
    return isinstance(info, dict) and info.get("description") == PREANNOTATIONS_DESCRIPTION


def refuse_preannotations(uri: str, fmt: str, member: str = "") -> ToolLabels:
    """The one problem of a file that is taudis's own pre-annotations given back as labels."""
    where = f"{member} is " if member else "this is "
    return unreadable(
        uri,
        fmt,
        f"{where}taudis's own pre-annotations (info.description {PREANNOTATIONS_DESCRIPTION!r}: the model's "
        "predictions that taudis export wrote), not labels: load them into the tool, have them corrected, and "
        "put the tool's export here: Label Studio's JSON (taudis labelstudio pull writes it), or CVAT's "
        "'COCO 1.0' or 'CVAT for images 1.1'",
    )


def read_coco(doc: Any, uri: str) -> ToolLabels:
    """Read a plain COCO labels file, whose image ids are meant to be the pool's."""
    return read_coco_document(doc, uri, fmt="coco", ids_are_pool_ids=True)
