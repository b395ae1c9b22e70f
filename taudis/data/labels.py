"""Labels' rules: the problems found in a labels file, and the geometry every mask and box must keep.

Every reader and check of annotators' labels reports through LabelProblem / LabelValidationError,
so that a refused file lists all of its problems at once, in one format, whichever tool wrote it.
The geometry rules (segmentation_problem, bbox_problem, box_mask_problem) are the one place that says what a valid
COCO segmentation or box is, for datasets (taudis.data.coco) and labels (taudis.campaign.ingest).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_PROBLEMS = 50  # shown in the message; every problem stays in ``problems``


@dataclass(frozen=True)
class LabelProblem:
    """One reason a labels file is refused."""

    file: str
    record: str  # e.g. "annotation id 7 (index 3)" or "image id 5 (index 0)"
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.record}, field {self.field!r}: {self.message}"


class LabelValidationError(ValueError):
    """A labels file breaks a rule; ``problems`` lists every problem found (file, record, field)."""

    def __init__(self, problems: Sequence[LabelProblem]):
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:MAX_PROBLEMS])
        more = f"\n  ... and {len(self.problems) - MAX_PROBLEMS} more" if len(self.problems) > MAX_PROBLEMS else ""
        super().__init__(f"{len(self.problems)} problem(s) in the labels:\n{shown}{more}")


# ---------------------------------------------------------------------------------- geometry
# The one place for the rules a segmentation or a box must keep, for datasets and for labels.

EDGE_TOLERANCE = 1.0  # pixels: polygons and boxes may touch the border, with rounding
# A box agrees with its mask when each edge is within this many pixels plus BOX_SLACK_SHARE of the
# mask's extent of the mask's own box: loose enough for hand-drawn or rounded boxes, tight enough
# to catch [x1, y1, x2, y2] boxes and masks in other coordinates (normalised, another image size).
BOX_SLACK_PIXELS = 2.0
BOX_SLACK_SHARE = 0.25


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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rle_problem(segmentation: Mapping[str, Any], height: int, width: int) -> tuple[str, str] | None:
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
        if _is_number(polygon):
            return "segmentation", "a flat list of numbers: COCO wants a list of polygons, [[x1, y1, x2, y2, ...]]"
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            return field, "a polygon must be a list of finite numbers"
        if len(polygon) < 6 or len(polygon) % 2:
            return field, f"a polygon needs an even number (>= 6) of coordinates, got {len(polygon)}"
        xs, ys = polygon[0::2], polygon[1::2]
        if min(xs) < -EDGE_TOLERANCE or max(xs) > width + EDGE_TOLERANCE:
            return field, f"x outside the image (0..{width}): {min(xs)}..{max(xs)}"
        if min(ys) < -EDGE_TOLERANCE or max(ys) > height + EDGE_TOLERANCE:
            return field, f"y outside the image (0..{height}): {min(ys)}..{max(ys)}"
    return None


def segmentation_problem(segmentation: Any, height: int, width: int) -> tuple[str, str] | None:
    """(field, message) of the first problem of a COCO segmentation on a height x width image, or None.

    Polygons: flat lists of >= 3 finite (x, y) pairs inside the image (within EDGE_TOLERANCE).
    RLE: ``size`` equal to the image's, counts (compressed string or integer list) that decode
    and cover the image exactly.
    """
    if isinstance(segmentation, dict):
        return _rle_problem(segmentation, height, width)
    if isinstance(segmentation, list):
        return _polygon_problem(segmentation, height, width)
    return "segmentation", f"expected polygons (list) or RLE (object), got {type(segmentation).__name__}"


def bbox_problem(bbox: Any, height: int, width: int) -> str | None:
    """The problem of a COCO box ``[x, y, w, h]`` on a height x width image, or None."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"expected [x, y, width, height] finite numbers, got {bbox!r}"
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        return f"negative width or height: {bbox}"
    # Slack at the border: many tools round boxes outward.
    if x < -EDGE_TOLERANCE or y < -EDGE_TOLERANCE or x + w > width + EDGE_TOLERANCE or y + h > height + EDGE_TOLERANCE:
        return f"box {bbox} is outside the image ({width}x{height})"
    return None


def box_mask_problem(bbox: Sequence[float], rle: Mapping[str, Any]) -> str | None:
    """The problem of a valid COCO box that is not its (non-empty) mask's box, or None.

    A Mask R-CNN learns its boxes from these: a box elsewhere than its mask teaches the box head
    one object and the mask head another, and it is the mark of a format mix-up upstream.
    """
    from pycocotools import mask as mask_utils

    if int(mask_utils.area(rle)) == 0:
        return None  # nothing to compare with: the mask's own rule reports it where it matters
    mask_box = [float(v) for v in mask_utils.toBbox(rle)]
    if _boxes_agree(bbox, mask_box):
        return None
    told = f"box {[round(float(v), 1) for v in bbox]} is not its mask's, which spans {[round(v, 1) for v in mask_box]}"
    if _boxes_agree(bbox, _row_major_box(rle)):
        return (
            f"{told}, but is the mask's read row by row: COCO's RLE runs go column by column (numpy's "
            "mask.flatten(order='F'), or pycocotools.mask.encode(np.asfortranarray(mask)))"
        )
    return (
        f"{told} ([x, y, width, height]): a box given as [x1, y1, x2, y2], or a mask in other coordinates than the "
        "image's pixels?"
    )


def _boxes_agree(box: Sequence[float], mask_box: Sequence[float] | None) -> bool:
    """Whether a stated box is a mask's box, within the slack of rounding and of tools' outlines."""
    if mask_box is None:
        return False
    x, y, w, h = (float(v) for v in box)
    mx, my, mw, mh = mask_box
    slack_x = BOX_SLACK_PIXELS + BOX_SLACK_SHARE * mw
    slack_y = BOX_SLACK_PIXELS + BOX_SLACK_SHARE * mh
    return max(abs(x - mx), abs(x + w - mx - mw)) <= slack_x and max(abs(y - my), abs(y + h - my - mh)) <= slack_y


def _row_major_box(rle: Mapping[str, Any]) -> list[float] | None:
    """The box of the mask whose runs are read row by row (the mix-up of a converter that ran them so)."""
    from pycocotools import mask as mask_utils

    mask = mask_utils.decode(dict(rle))
    rows = mask.flatten(order="F").reshape(mask.shape)  # the runs' pixels in the order they were written
    ys, xs = np.nonzero(rows)
    if ys.size == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def segmentation_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """The compressed RLE (pycocotools form, counts as bytes) of a valid polygon or RLE segmentation."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        return dict(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return dict(mask_utils.frPyObjects(dict(segmentation), height, width))
    return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_json(rle: Mapping[str, Any]) -> dict[str, Any]:
    """A pycocotools RLE with its counts as a str, as COCO JSON stores it."""
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }
