"""COCO instance-segmentation datasets: load with validation, write, subset, register in detectron2.

A dataset is a COCO JSON file (``images``, ``annotations``, ``categories``) plus an image root
directory against which each image's ``file_name`` is resolved. Segmentations may be polygons
(a list of flat ``[x0, y0, x1, y1, ...]`` lists) or RLE (``{"size": [h, w], "counts": str | list}``).

Nothing here imports torch or detectron2 at module level; :func:`register_coco_dataset` imports
detectron2 when called.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

REQUIRED_IMAGE_KEYS = ("id", "file_name", "height", "width")
REQUIRED_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "segmentation")
# A box without a mask gives the mask head nothing to learn, and detectron2's mapper fails on a mix of both.
_BOX_ONLY = " (a box-only annotation: taudis trains masks, so draw its mask, or leave the annotation out)"
REQUIRED_CATEGORY_KEYS = ("id", "name")
ID_MIN, ID_MAX = -(2**63), 2**63 - 1


class CocoFormatError(ValueError):
    """A COCO file breaks the format. The message names the file, the record and the field."""

    def __init__(self, source: str, message: str, *, record: str | None = None, field: str | None = None):
        where = source
        if record is not None:
            where += f", {record}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"COCO file {where}: {message}")
        self.source = source
        self.record = record
        self.field = field


def read_coco_json(annotations: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a COCO JSON file from a local path or a ``gs://`` URI (through ``taudis.storage``), unvalidated."""
    from taudis.storage import StorageError, read_bytes

    source = str(annotations)
    try:
        raw = read_bytes(source)
    except (OSError, StorageError) as err:
        raise CocoFormatError(source, f"cannot read: {err}") from err
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CocoFormatError(source, f"not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CocoFormatError(source, "top level must be a JSON object")
    return data


def load_coco(annotations: str | os.PathLike[str], *, validate: bool = True) -> dict[str, Any]:
    """Load a COCO instance-segmentation file, validating every record.

    ``annotations`` may be omitted from the file (an unlabelled pool); ``categories`` and
    ``images`` must be present. Returns the parsed dict, unchanged.

    Raises:
        CocoFormatError: naming the file and the offending image, annotation or category.
    """
    data = read_coco_json(annotations)
    if validate:
        validate_coco(data, source=str(annotations))
    return data


def validate_coco(data: dict[str, Any], *, source: str = "<memory>") -> None:
    """Check a parsed COCO dict: required keys, unique ids, known references, boxes, segmentations.

    Raises:
        CocoFormatError: at the first problem, naming ``source`` and the record.
    """
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoFormatError(source, f"missing or non-list top-level key {key!r}", field=key)
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise CocoFormatError(source, "non-list top-level key 'annotations'", field="annotations")
    if annotations and isinstance(annotations[0], dict) and "segments_info" in annotations[0]:
        raise CocoFormatError(
            source,
            "a COCO panoptic file (segments_info, and masks in PNG files beside it): taudis reads COCO instance "
            "segmentation (instances_*.json); convert it, e.g. with panopticapi's panoptic2detection converter",
            record="annotation #0",
            field="segments_info",
        )
    categories = _check_records(data["categories"], "category", REQUIRED_CATEGORY_KEYS, source)
    images = _check_records(data["images"], "image", REQUIRED_IMAGE_KEYS, source)
    _check_unique_names(categories, source)
    for image_id, image in images.items():
        where = f"image id {image_id}"
        for key in ("height", "width"):
            if not _is_int(image[key]) or image[key] <= 0:
                raise CocoFormatError(source, f"must be a positive integer, got {size_advice(image[key])}",
                                      record=where, field=key)  # fmt: skip
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise CocoFormatError(source, "must be a non-empty string", record=where, field="file_name")
    _check_unique_files(images, source)
    seen: set[int] = set()
    for position, ann in enumerate(annotations):
        record = f"annotation #{position}"
        if not isinstance(ann, dict):
            raise CocoFormatError(source, "not a JSON object", record=record)
        for key in REQUIRED_ANNOTATION_KEYS:
            if key not in ann:
                raise CocoFormatError(source, f"missing key{_BOX_ONLY if key == 'segmentation' else ''}",
                                      record=record, field=key)  # fmt: skip
        record = f"annotation id {ann['id']} (#{position})"
        _check_id(ann["id"], source, record)
        if ann["id"] in seen:
            raise CocoFormatError(source, f"duplicate annotation id {ann['id']}", record=record, field="id")
        seen.add(ann["id"])
        for key in ("image_id", "category_id"):
            # 1.0, True and "1" pass a lookup by value, or fail it with a misleading "unknown id".
            if not _is_int(ann[key]):
                raise CocoFormatError(source, f"must be an integer, got {ann[key]!r}", record=record, field=key)
        if ann["image_id"] not in images:
            raise CocoFormatError(source, f"unknown image id {ann['image_id']!r}", record=record, field="image_id")
        if ann["category_id"] not in categories:
            raise CocoFormatError(
                source, f"unknown category id {ann['category_id']!r}", record=record, field="category_id"
            )
        _check_iscrowd(ann, source, record)
        _check_area(ann, source, record)
        image = images[ann["image_id"]]
        _check_bbox(ann["bbox"], image, source, record)
        _check_segmentation(ann["segmentation"], image, source, record)
        _check_box_mask(ann["bbox"], ann["segmentation"], image, source, record)


def size_advice(value: Any) -> str:
    """A refused image size as the message shows it: a whole float says what to write instead (a
    converter built on numpy or pandas writes 640.0)."""
    if isinstance(value, float) and value.is_integer() and value > 0:
        return f"{value!r} (write it as {int(value)}: COCO sizes are whole pixels, as integers)"
    return repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_iscrowd(ann: dict[str, Any], source: str, record: str) -> None:
    """iscrowd, when present, is a flag: 0 or 1 (or a JSON boolean), as detectron2 and COCOeval read it.

    null or "false" crash the detectron2 dicts and COCOeval; 2 is no COCO value (both would read it as 1).
    """
    value = ann.get("iscrowd", 0)
    if not (isinstance(value, int | float) and value in (0, 1)):
        raise CocoFormatError(source, f"must be 0 or 1 (or a boolean), got {value!r}", record=record, field="iscrowd")


def _check_area(ann: dict[str, Any], source: str, record: str) -> None:
    """area, when given (null: unknown, computed from the mask where needed), is a finite number >= 0.

    COCOeval sorts objects into its size ranges by it: a string crashes it, and a negative or NaN area
    falls into no range, so the object is silently never scored.
    """
    value = ann.get("area")
    if value is not None and not (_is_finite_number(value) and value >= 0):
        raise CocoFormatError(
            source, f"must be a finite non-negative number (or absent), got {value!r}", record=record, field="area"
        )


def _check_records(records: list[Any], kind: str, required: Sequence[str], source: str) -> dict[int, dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    for position, record in enumerate(records):
        where = f"{kind} #{position}"
        if not isinstance(record, dict):
            raise CocoFormatError(source, "not a JSON object", record=where)
        for key in required:
            if key not in record:
                raise CocoFormatError(source, "missing key", record=where, field=key)
        _check_id(record["id"], source, where)
        if record["id"] in by_id:
            raise CocoFormatError(source, f"duplicate {kind} id {record['id']}", record=where, field="id")
        by_id[record["id"]] = record
    return by_id


def _check_id(value: Any, source: str, record: str) -> None:
    """An id is an integer that fits the int64 columns of the instance tables (no float, no string)."""
    if not _is_int(value):
        raise CocoFormatError(source, f"id must be an integer, got {value!r}", record=record, field="id")
    if not ID_MIN <= value <= ID_MAX:
        raise CocoFormatError(source, f"id {value} is outside the 64-bit signed range", record=record, field="id")


def normal_file_name(name: str) -> str:
    """A file name as two records are compared: Unicode NFC, forward slashes, ``.`` and ``..`` resolved."""
    return posixpath.normpath(unicodedata.normalize("NFC", name).replace("\\", "/"))


def _check_unique_files(images: dict[int, dict[str, Any]], source: str) -> None:
    # Labels come back from the tools by file name: two records of one file would split its labels.
    seen: dict[str, int] = {}
    for image_id, image in images.items():
        name = normal_file_name(image["file_name"])
        if name in seen:
            raise CocoFormatError(
                source,
                f"the file {image['file_name']!r} is also image id {seen[name]}: one file, one image record",
                record=f"image id {image_id}",
                field="file_name",
            )
        seen[name] = image_id


def _check_unique_names(categories: dict[int, dict[str, Any]], source: str) -> None:
    # Labels come back from the tools by category name: two ids of one name would merge classes.
    seen: dict[str, int] = {}
    for category_id, category in categories.items():
        where = f"category id {category_id}"
        if not isinstance(category["name"], str) or not category["name"].strip():
            raise CocoFormatError(
                source, f"must be a non-empty string, got {category['name']!r}", record=where, field="name"
            )
        name = category["name"].strip()
        if name in seen:
            raise CocoFormatError(
                source, f"the name {name!r} is also category id {seen[name]}", record=where, field="name"
            )
        seen[name] = category_id


def _check_bbox(bbox: Any, image: dict[str, Any], source: str, record: str) -> None:
    from taudis.data.labels import bbox_problem

    problem = bbox_problem(bbox, int(image["height"]), int(image["width"]))
    if problem is not None:
        raise CocoFormatError(source, problem, record=record, field="bbox")


def _check_segmentation(seg: Any, image: dict[str, Any], source: str, record: str) -> None:
    from taudis.data.labels import segmentation_problem

    height, width = int(image["height"]), int(image["width"])
    problem = segmentation_problem(seg, height, width)
    if problem is not None:
        field, message = problem
        if field == "segmentation.size" and height != width and seg.get("size") == [width, height]:
            message += (
                f" ({[width, height]} is the image's [width, height]: COCO writes an RLE's size as [height, width])"
            )
        if seg == []:
            message += _BOX_ONLY
        raise CocoFormatError(source, message, record=record, field=field)


def _check_box_mask(bbox: Any, seg: Any, image: dict[str, Any], source: str, record: str) -> None:
    from taudis.data.labels import box_mask_problem, segmentation_rle

    problem = box_mask_problem(bbox, segmentation_rle(seg, int(image["height"]), int(image["width"])))
    if problem is not None:
        raise CocoFormatError(source, problem, record=record, field="bbox")


# EXIF orientations (TIFF tag 274) and what each does to the stored pixels.
_ORIENTATIONS = {
    2: "mirrored left to right",
    3: "turned 180 degrees",
    4: "mirrored top to bottom",
    5: "mirrored and turned 90 degrees",
    6: "turned 90 degrees",
    7: "mirrored and turned 270 degrees",
    8: "turned 270 degrees",
}


@dataclass(frozen=True)
class ImageFileCheck:
    """What one read of a dataset's image files found (see :func:`inspect_image_files`)."""

    problems: list[str]  # the files are wrong: missing, unreadable, of another size than the COCO file's
    warnings: list[str]  # valid, but maybe not read as their labels mean


def check_image_files(data: dict[str, Any], image_root: str) -> list[str]:
    """Problems with a dataset's image files: missing, unreadable, or a size that differs from the COCO file.

    Returns:
        One message per problem, naming the image id and file (empty when all is well).
    """
    return inspect_image_files(data, image_root).problems


def inspect_image_files(data: dict[str, Any], image_root: str, *, shown: int = 3) -> ImageFileCheck:
    """Read every image file once (a ``gs://`` root downloads each once) and say what is wrong or suspect.

    Problems: a file missing, unreadable, or of another size than the COCO file says, as training
    reads it (after its EXIF orientation). Warnings, one per kind, naming how many images it
    concerns and the first ``shown``:

    - An EXIF orientation that turns or mirrors the image without changing its size. taudis reads
      every image turned by its orientation, as detectron2 does and as browsers (so Label Studio
      and CVAT) show it. Where the turn swaps the sides, masks drawn on the stored pixels show as
      a size problem; a 180-degree turn, a mirror, or any turn of a square image keeps the size,
      so nothing but a look can tell which pixels the masks belong to.
    - A file of several frames (a TIFF stack, an animation): the model reads the first one only.
    """
    # The model's own reader: its size limit, and the EXIF orientation that training applies.
    from taudis.model.images import displayed_size, open_file, open_image
    from taudis.storage import is_gcs

    if not is_gcs(image_root) and not os.path.isdir(image_root):
        # One problem, not one "unreadable" line per image of the file.
        return ImageFileCheck([f"image root {image_root} does not exist (or is not a directory)"], [])
    problems, turned, stacked = [], [], []
    folders: dict[str, dict[str, list[str]]] = {}  # folder -> NFC name -> its names there (listed once)
    for image in data["images"]:
        path = os.path.join(image_root, image["file_name"])
        where = f"image id {image['id']} ({path})"
        try:
            with open_file(path) as opened:  # the file's own header: its frames and orientation
                orientation = opened.getexif().get(0x0112, 1)  # before displayed_size: loading a TIFF drops it
                width, height = displayed_size(opened)
                rotated = orientation in (5, 6, 7, 8)
                # A camera's MPO JPEG holds the photo first and previews after it: one image.
                frames = int(getattr(opened, "n_frames", 1)) if opened.format != "MPO" else 1
            with open_image(path) as decoded:  # decoded as the model reads it: damage shows here
                decoded.load()
        except Exception as err:  # PIL raises OSError, ValueError, SyntaxError...
            hint = "" if os.path.exists(path) else _missing_hint(image["file_name"], path, image_root, folders)
            problems.append(f"{where}: unreadable: {type(err).__name__}: {err}{hint}")
            continue
        if (height, width) != (image["height"], image["width"]):
            problems.append(
                f"{where}: the file is {width}x{height}{' after its EXIF rotation' if rotated else ''}, "
                f"the COCO file says {image['width']}x{image['height']}"
            )
        elif orientation in (2, 3, 4) or (orientation in (5, 6, 7, 8) and width == height):
            turned.append(f"{where}: EXIF orientation {orientation}, {_ORIENTATIONS[orientation]}")
        if frames > 1:
            stacked.append(f"{where}: {frames} frames")
    warnings = []
    if turned:
        warnings.append(
            f"{_counted(turned, shown)} carry an EXIF orientation that keeps their size: taudis trains on them turned, "
            "as detectron2 reads them and as browsers show them, and their size cannot tell whether the masks were "
            "drawn on the turned image or on the stored pixels; open one with its masks to check (a converter that "
            "ignored EXIF drew them on the stored pixels: then strip the tag)"
        )
    if stacked:
        warnings.append(
            f"{_counted(stacked, shown)} hold several frames: the model reads the first frame only (for channels "
            "stored as frames, write one image of them)"
        )
    return ImageFileCheck(problems, warnings)


def _counted(found: list[str], shown: int) -> str:
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return f"{len(found)} image(s) ({'; '.join(found[:shown])}{more})"


def unlabelled_categories(data: dict[str, Any]) -> list[str]:
    """Warnings for categories that no annotation of a labelled file uses.

    A class without examples is still a class the model must score, which dilutes the classification
    entropy and margin that selection reads. Roboflow's COCO exports add one such category, named for
    the dataset. A file without any annotation (an unlabelled pool) gives no warning.
    """
    used = {a.get("category_id") for a in data.get("annotations", [])}
    if not used:
        return []
    return [
        f"category {c['name']!r} (id {c['id']}) has no annotation in this file: until one is labelled, the model "
        "learns a class it never sees; if it is no class at all (Roboflow's exports add one named for the dataset, "
        "the others' supercategory), leave it out of the categories"
        for c in data["categories"]
        if c["id"] not in used
    ]


def annotation_warnings(data: dict[str, Any], *, shown: int = 3) -> list[str]:
    """Warnings for annotations of a (validated) COCO dict that are valid but will not teach or score as meant.

    One warning per kind, naming how many annotations it concerns (and, for empty masks, the first ``shown``):
    crowd regions (:func:`crowd_warning`), empty masks (:func:`empty_mask_warning`), and coordinates
    that look like fractions of the image size (:func:`normalised_warning`).
    """
    found = [crowd_warning(data), empty_mask_warning(data, shown=shown), normalised_warning(data)]
    return [warning for warning in found if warning]


def nothing_to_score(data: dict[str, Any]) -> str | None:
    """Why COCO evaluation finds no object to score in a (validated) split, else None: it has no
    annotation, or crowd regions only (COCOeval scores none of them, so every AP comes out empty)."""
    annotations = data.get("annotations", [])
    if any(not ann.get("iscrowd", 0) for ann in annotations):
        return None
    if not annotations:
        return "no annotation"
    return (
        f"only crowd regions ({len(annotations)} annotation(s), every one iscrowd=1; CVAT's COCO export marks every "
        "mask so: set iscrowd 0)"
    )


def crowd_warning(data: dict[str, Any]) -> str | None:
    """A warning when annotations are crowd regions (iscrowd 1), else None.

    detectron2 trains on no crowd annotation and COCOeval only excuses detections over them, so a
    crowd object is neither trained on nor scored. CVAT's COCO 1.0 export writes every mask as an
    uncompressed RLE with iscrowd 1, so a CVAT dataset reads as all crowd.
    """
    annotations = data.get("annotations", [])
    crowd = sum(1 for ann in annotations if ann.get("iscrowd", 0))
    if not crowd:
        return None
    return (
        f"{crowd} of {len(annotations)} annotation(s) are iscrowd=1 (crowd regions): they are neither trained on "
        "(detectron2 skips crowd annotations) nor scored (COCO evaluation ignores them); CVAT's COCO export marks "
        "every mask so: set iscrowd 0 to use them as objects"
    )


def empty_mask_warning(data: dict[str, Any], *, shown: int = 3) -> str | None:
    """A warning naming the annotations whose mask covers no pixel, else None.

    An empty RLE or a polygon of collinear or repeated points is valid COCO but no object: the model
    learns none from it, and COCO evaluation counts it as one no prediction can match (an empty mask's
    IoU is 0).
    """
    from pycocotools import mask as mask_utils

    from taudis.data.labels import segmentation_rle

    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in data["images"]}
    empty = [
        f"annotation id {ann['id']} (#{position})"
        for position, ann in enumerate(data.get("annotations", []))
        if int(mask_utils.area(segmentation_rle(ann["segmentation"], *sizes[ann["image_id"]]))) == 0
    ]
    if not empty:
        return None
    more = f" and {len(empty) - shown} more" if len(empty) > shown else ""
    return (
        f"{len(empty)} annotation(s) ({'; '.join(empty[:shown])}{more}) have an empty mask (area 0: an empty RLE, "
        "a polygon of collinear or repeated points): the model learns no object from them, and COCO evaluation "
        "counts each as an object no prediction can find; redraw or remove them"
    )


NORMALISED_MAX = 1.5  # coordinates up to this are fractions of the image size, with a converter's overshoot
NORMALISED_MIN_SIDE = 16  # px: images this large hold objects of more than a pixel or two


def normalised_warning(data: dict[str, Any]) -> str | None:
    """A warning when every box value and polygon coordinate is within [0, NORMALISED_MAX] on larger images.

    Such a file was written in fractions of the image size (as YOLO stores labels) rather than in
    pixels: its boxes and masks agree with each other, so validation passes, but every object is a
    pixel or two in the image's corner.
    """
    annotations = data.get("annotations", [])
    values = [float(v) for ann in annotations for v in ann["bbox"]]
    values += [
        float(v) for ann in annotations if isinstance(ann["segmentation"], list) for p in ann["segmentation"] for v in p
    ]
    annotated = {ann["image_id"] for ann in annotations}
    sides = [min(int(img["height"]), int(img["width"])) for img in data["images"] if img["id"] in annotated]
    if not values or max(values) > NORMALISED_MAX or min(sides) < NORMALISED_MIN_SIDE:
        return None
    return (
        f"every box value and polygon coordinate of the {len(annotations)} annotation(s) lies within "
        f"[0, {NORMALISED_MAX}] while the images are {min(sides)} px or more across: the converter wrote fractions "
        "of the image size (normalised coordinates); COCO coordinates are pixels: multiply x and widths by the "
        "image's width, y and heights by its height"
    )


WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def missing_file_hint(file_name: str, image_root: str) -> str:
    """Why ``file_name`` may name no file under ``image_root`` (empty when nothing tells): " (...)"."""
    return _missing_hint(file_name, os.path.join(image_root, file_name), image_root, {})


def _missing_hint(file_name: str, path: str, image_root: str, folders: dict[str, dict[str, list[str]]]) -> str:
    """Why a file_name may name no file: a Windows path, the image root's own folder named twice, or
    the name in another form (Unicode, letter case, URL encoding)."""
    if WINDOWS_DRIVE.match(file_name) or file_name.startswith("\\\\"):
        return " (file_name is an absolute Windows path: write it relative to the image root, with /)"
    if "\\" in file_name:
        return f" (file_name uses Windows separators: write {file_name.replace(chr(92), '/')!r})"
    first, _, rest = file_name.partition("/")
    if (
        rest
        and first == os.path.basename(os.path.normpath(image_root))
        and os.path.exists(os.path.join(image_root, rest))
    ):
        there = os.path.join(image_root, rest)
        return (
            f" (file_name starts with the image root's own folder {first + '/'!r}, and {there} exists: give the "
            "folder above as the image root, or drop the folder from the file names)"
        )
    return _other_form_hint(path, folders)


def _alike(name: str) -> str:
    """A file name as a person reads it: URL-decoded, one Unicode form, one letter case."""
    return unicodedata.normalize("NFC", unquote(name)).casefold()


def _other_form_hint(path: str, folders: dict[str, dict[str, list[str]]]) -> str:
    """A hint when the folder holds the file under its name in another form: Unicode (NFC, NFD),
    letter case (a disk that ignores it, where the names were written), or URL encoding."""
    folder, name = os.path.split(path)
    if folder not in folders:
        try:
            listed = os.listdir(folder or ".")
        except OSError:
            listed = []
        folders[folder] = {}
        for entry in listed:
            folders[folder].setdefault(_alike(entry), []).append(entry)
    others = [n for n in folders[folder].get(_alike(name), []) if n != name]
    if not others:
        return ""
    other = others[0]
    if unicodedata.normalize("NFC", other) == unicodedata.normalize("NFC", name):
        why = "the same name in another Unicode form, as macOS writes it"
    elif unquote(other) == unquote(name):
        why = "the same name URL-encoded otherwise (%20 is a space)"
    else:
        why = "the same name in other letter case (a disk that ignores case, where the names were written)"
    return f" (the folder holds {other!r}, {why}: rename the file, or the file_name, to one form)"


def write_coco(data: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a COCO dict as compact, deterministic JSON (keys in insertion order), atomically.

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)
    return path


def subset_coco(data: dict[str, Any], image_ids: Iterable[int], *, keep_annotations: bool = True) -> dict[str, Any]:
    """A copy of ``data`` with only the given images (in the file's order) and their annotations.

    Args:
        data: a COCO dict.
        image_ids: ids to keep; every id must exist in ``data``.
        keep_annotations: False drops all annotations (an unlabelled view of the images).

    Raises:
        KeyError: an id is not in ``data``.
    """
    wanted = set(int(i) for i in image_ids)
    known = {img["id"] for img in data["images"]}
    missing = sorted(wanted - known)
    if missing:
        raise KeyError(f"image ids not in the dataset: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    out = {key: value for key, value in data.items() if key not in ("images", "annotations")}
    out["images"] = [img for img in data["images"] if img["id"] in wanted]
    anns = data.get("annotations", []) if keep_annotations else []
    out["annotations"] = [ann for ann in anns if ann["image_id"] in wanted]
    return out


def class_names(data: dict[str, Any]) -> list[str]:
    """Category names in ascending category-id order: the model's contiguous class order."""
    return [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]


def category_ids(data: dict[str, Any]) -> list[int]:
    """Category ids in ascending order; index i is the model's class i."""
    return sorted(int(c["id"]) for c in data["categories"])


def to_detectron2_dicts(data: dict[str, Any], image_root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """detectron2's standard dataset dicts for a (validated) COCO dict.

    Category ids become contiguous class indices in ascending id order; boxes stay XYWH_ABS
    (``bbox_mode`` is detectron2's BoxMode.XYWH_ABS, value 1); crowd annotations keep ``iscrowd``.
    """
    xywh_abs = 1  # detectron2.structures.BoxMode.XYWH_ABS, without importing detectron2
    contiguous = {cid: index for index, cid in enumerate(category_ids(data))}
    by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in data["images"]}
    img_sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in data["images"]}
    for ann in data.get("annotations", []):
        by_image[ann["image_id"]].append(
            {
                "bbox": [float(v) for v in ann["bbox"]],
                "bbox_mode": xywh_abs,
                "category_id": contiguous[ann["category_id"]],
                "segmentation": _detectron2_segmentation(ann["segmentation"], img_sizes[ann["image_id"]]),
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
        )
    root = str(image_root)
    return [
        {
            "file_name": os.path.join(root, img["file_name"]),
            "image_id": img["id"],
            "height": img["height"],
            "width": img["width"],
            "annotations": by_image[img["id"]],
        }
        for img in data["images"]
    ]


def _detectron2_segmentation(segmentation: Any, size: tuple[int, int]) -> Any:
    """Polygons and compressed RLE as they are; uncompressed RLE (counts a list) compressed.

    detectron2's mapper decodes RLE with pycocotools, which reads compressed counts only (its own
    COCO loader converts the same way).
    """
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        from taudis.data.labels import rle_json, segmentation_rle

        return rle_json(segmentation_rle(segmentation, *size))
    return segmentation


def register_coco_dataset(name: str, annotations: str | os.PathLike[str], image_root: str | os.PathLike[str]) -> None:
    """Register a COCO dataset in detectron2's DatasetCatalog and MetadataCatalog under ``name``.

    The metadata carries ``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ``json_file``,
    ``image_root`` and ``evaluator_type="coco"``, as detectron2's own COCO datasets do. A name that
    is already registered is replaced.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    data = load_coco(annotations)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: to_detectron2_dicts(data, image_root))
    MetadataCatalog.get(name).set(
        thing_classes=class_names(data),
        thing_dataset_id_to_contiguous_id={cid: i for i, cid in enumerate(category_ids(data))},
        json_file=str(annotations),
        image_root=str(image_root),
        evaluator_type="coco",
    )
