"""CVAT's own export, "CVAT for images 1.1": one XML file (``annotations.xml``, bare or zipped).

What it holds, per ``<image id name width height>``: its shapes, each with a ``label`` (the
category's name). Read as instances:

- ``<polygon points="x0,y0;x1,y1;...">``: a polygon in pixels;
- ``<mask rle="..." left top width height>``: a bitmap over the box of ``width`` x ``height``
  pixels whose top-left pixel is (``left``, ``top``); ``rle`` counts alternating runs, background
  first, row by row (CVAT's own encoding, not COCO's column-major one).

A shape whose ``<attribute name="is_crowd">`` is true (the attribute CVAT's COCO import and
export read, where a project's label has it) is a crowd region, ``iscrowd`` 1: labelled, neither
trained on nor scored as an object; so is a group with such a shape among its polygons and masks.

Shapes of one ``group_id`` with a polygon or mask among them are one instance, as CVAT's COCO
export makes them: the union of the group's polygons and masks, which must share one label; a
box in the group is that instance's box (CVAT imports a COCO instance so) and must have its label.

Refused, each naming the image and the shape (and its group): boxes outside such a group,
ellipses, polylines, points, skeletons and cuboids, grouped or not (they outline no mask: draw a
polygon or a mask), and "CVAT for video 1.1" (its ``<track>`` elements interpolate shapes across
frames). Image tags (``<tag>``) hold no instance and are ignored. CVAT lists every image of the
task, so an image without shapes is labelled empty, as in its COCO export. Images and labels are
matched to the pool by file name and category name, never by CVAT's numbers.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

import numpy as np

from taudis.data.labels import rle_json, segmentation_problem, segmentation_rle
from taudis.data.masks import decode_rle, encode_rle
from taudis.labeling.toollabels import Problems, ToolAnnotation, ToolImage, ToolLabels, unreadable

FORMAT = "cvat-xml"
UNMASKED_SHAPES = ("box", "ellipse", "polyline", "points", "skeleton", "cuboid")
MASKED_SHAPES = ("polygon", "mask")


def is_cvat_xml(data: bytes) -> bool:
    """Whether the bytes look like an XML document (CVAT's only XML export is this one)."""
    return data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def read_cvat_xml(data: bytes, uri: str) -> ToolLabels:
    """Read a "CVAT for images 1.1" XML export (see the module docstring)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        return unreadable(uri, FORMAT, f"not well-formed XML: {err}")
    if root.tag != "annotations":
        return unreadable(uri, FORMAT, f"the root element is <{root.tag}>, CVAT's is <annotations>")
    if root.find("track") is not None:
        return unreadable(
            uri,
            FORMAT,
            "CVAT for video 1.1 (shapes in <track>s) is not read: export 'CVAT for images 1.1' or 'COCO 1.0'",
        )
    problems = Problems(uri)
    images: list[ToolImage] = []
    annotations: list[ToolAnnotation] = []
    for index, element in enumerate(root.iter("image")):
        image = _image(element, index, problems)
        if image is None:
            continue
        images.append(image)
        annotations += _image_annotations(element, image, len(images) - 1, problems)
    return ToolLabels(uri, FORMAT, tuple(images), tuple(annotations), tuple(problems.items))


def _image(element: ET.Element, index: int, problems: Problems) -> ToolImage | None:
    name = element.get("name")
    record = f"image id {element.get('id')} ({name!r})"
    before = len(problems)
    tool_id = _integer(element.get("id"))
    if tool_id is None:
        problems.add(record, "id", f"expected an integer, got {element.get('id')!r}")
    if not name:
        problems.add(record, "name", "expected the image's file name")
    sizes = {key: _integer(element.get(key)) for key in ("height", "width")}
    for key, value in sizes.items():
        if value is None or value <= 0:
            problems.add(record, key, f"expected a positive integer, got {element.get(key)!r}")
    if len(problems) > before:
        return None
    return ToolImage(index, record, str(name), tool_id, None, False, sizes["height"], sizes["width"])


def _image_annotations(
    element: ET.Element, image: ToolImage, image_index: int, problems: Problems
) -> list[ToolAnnotation]:
    """The image's instances in shape order: each ungrouped shape, and each group with a polygon or mask as one."""
    groups: dict[str, list[tuple[int, ET.Element]]] = {}
    for position, shape in enumerate(element):
        if shape.tag != "tag" and (shape.get("group_id") or "0") != "0":
            groups.setdefault(str(shape.get("group_id")), []).append((position, shape))
    masked = {key for key, members in groups.items() if any(s.tag in MASKED_SHAPES for _, s in members)}
    out: list[ToolAnnotation | None] = []
    for position, shape in enumerate(element):
        key = shape.get("group_id") or "0"
        if key not in masked:
            out.append(_instance(shape, position, image, image_index, problems))
        elif groups[key][0][0] == position:  # a group comes in at its first shape
            out.append(_group(key, groups[key], image, image_index, problems))
    return [annotation for annotation in out if annotation is not None]


def _instance(
    shape: ET.Element, position: int, image: ToolImage, image_index: int, problems: Problems
) -> ToolAnnotation | None:
    record = f"{image.record}, <{shape.tag}> #{position}"
    if shape.tag == "tag":
        return None
    label = _label(shape, record, problems)
    segmentation = _segmentation(shape, image, record, problems)
    if label is None or segmentation is None:
        return None
    return ToolAnnotation(image_index, record, label, segmentation, None, _crowd([shape]))


def _group(
    key: str, members: list[tuple[int, ET.Element]], image: ToolImage, image_index: int, problems: Problems
) -> ToolAnnotation | None:
    """One instance of a group's polygons and masks (their union), as CVAT's COCO export makes it.

    A box in the group is the instance's box (CVAT imports a COCO instance so) when its label is
    the instance's; any other shape in it outlines no mask and is refused, not passed over.
    """
    record = f"{image.record}, group {key}"
    before = len(problems)
    parts = [(position, shape) for position, shape in members if shape.tag in MASKED_SHAPES]
    labels = {_label(shape, f"{record}, <{shape.tag}> #{position}", problems) for position, shape in parts}
    if len(labels) > 1 and None not in labels:
        problems.add(
            record, "label", f"the group's polygons and masks have different labels {sorted(map(str, labels))}"
        )
    label = next(iter(labels)) if len(labels) == 1 else None
    for position, shape in members:
        where = f"{record}, <{shape.tag}> #{position}"
        if shape.tag == "box" and label is not None and shape.get("label") != label:
            problems.add(where, "label", f"the box's label {shape.get('label')!r} is not its group's {label!r}")
        elif shape.tag != "box" and shape.tag not in MASKED_SHAPES:
            problems.add(
                where,
                shape.tag,
                f"the <{shape.tag}> is grouped with a polygon or mask but outlines no mask: draw that part "
                "as a polygon or a mask, or take it out of the group",
            )
    segmentations = [
        _segmentation(shape, image, f"{record}, <{shape.tag}> #{position}", problems) for position, shape in parts
    ]
    if len(problems) > before or label is None:
        return None
    where = f"{record} ({', '.join(f'<{shape.tag}> #{position}' for position, shape in parts)})"
    return ToolAnnotation(image_index, where, label, _union(segmentations, image), None, _crowd(s for _, s in parts))


def _crowd(shapes: Iterable[ET.Element]) -> int:
    """1 where a shape's ``is_crowd`` attribute is true (CVAT writes "true" or "false"), else 0."""
    return int(
        any(
            (attribute.text or "").strip().lower() in ("true", "1")
            for shape in shapes
            for attribute in shape.iter("attribute")
            if attribute.get("name") == "is_crowd"
        )
    )


def _union(segmentations: list[Any], image: ToolImage) -> list[list[float]] | dict[str, Any]:
    """The union of valid segmentations: polygons stay polygons (parts of one instance), else one RLE."""
    if all(isinstance(segmentation, list) for segmentation in segmentations):
        return [polygon for segmentation in segmentations for polygon in segmentation]
    height, width = int(image.height or 0), int(image.width or 0)
    masks = [decode_rle(rle_json(segmentation_rle(segmentation, height, width))) for segmentation in segmentations]
    return encode_rle(np.logical_or.reduce(masks))


def _label(shape: ET.Element, record: str, problems: Problems) -> str | None:
    label = shape.get("label")
    if not label:
        problems.add(record, "label", "the shape has no label")
        return None
    return label


def _segmentation(shape: ET.Element, image: ToolImage, record: str, problems: Problems) -> Any:
    """A polygon's or mask's segmentation on the image (None: a problem was reported)."""
    if shape.tag in UNMASKED_SHAPES:
        problems.add(record, shape.tag, f"a {shape.tag} outlines no mask: draw the instance as a polygon or a mask")
        return None
    if shape.tag not in MASKED_SHAPES:
        problems.add(record, shape.tag, f"unknown shape <{shape.tag}>")
        return None
    height, width = int(image.height or 0), int(image.width or 0)
    segmentation: Any
    if shape.tag == "polygon":
        segmentation = _polygon(shape.get("points"), record, problems)
    else:
        segmentation = _mask(shape, height, width, record, problems)
    if segmentation is None:
        return None
    problem = segmentation_problem(segmentation, height, width)
    if problem is not None:
        problems.add(record, *problem)
        return None
    return segmentation


def _polygon(points: str | None, record: str, problems: Problems) -> list[list[float]] | None:
    try:
        pairs = [tuple(float(v) for v in pair.split(",")) for pair in (points or "").split(";") if pair.strip()]
    except ValueError:
        pairs = [()]
    if not pairs or any(len(pair) != 2 or not all(np.isfinite(pair)) for pair in pairs):
        problems.add(record, "points", f"expected 'x,y;x,y;...' in pixels, got {(points or '')[:60]!r}")
        return None
    return [[v for pair in pairs for v in pair]]


def _mask(shape: ET.Element, height: int, width: int, record: str, problems: Problems) -> dict[str, Any] | None:
    box = {key: _integer(shape.get(key)) for key in ("left", "top", "width", "height")}
    if any(value is None or value < 0 for value in box.values()) or not box["width"] or not box["height"]:
        problems.add(record, "left/top/width/height", f"expected a box of non-negative integers, got {box}")
        return None
    left, top, box_w, box_h = (int(box[key] or 0) for key in ("left", "top", "width", "height"))
    if left + box_w > width or top + box_h > height:
        problems.add(record, "left/top/width/height", f"the box {box} reaches past the {width}x{height} image")
        return None
    try:
        counts = [int(c) for c in (shape.get("rle") or "").split(",")]
    except ValueError:
        counts = [-1]
    if any(c < 0 for c in counts) or sum(counts) != box_w * box_h:
        problems.add(record, "rle", f"the runs must be non-negative and cover the {box_w}x{box_h} box exactly")
        return None
    values = np.repeat(np.arange(len(counts)) % 2, counts).astype(bool)  # background first, then alternating
    mask = np.zeros((height, width), bool)
    mask[top : top + box_h, left : left + box_w] = values.reshape(box_h, box_w)  # row by row
    if not mask.any():
        problems.add(record, "rle", "the mask is empty")
        return None
    return encode_rle(mask)


def _integer(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
