"""Do the labelled objects keep a size the model can find, once images are resized to its input?

A config reads images at one input size (``INPUT.MIN_SIZE_TEST`` on the short side, at most
``INPUT.MAX_SIZE_TEST`` on the long one) and proposes boxes from anchors of fixed sizes. The CPU
config reads 128 px with anchors from 8 px: a folder of 1,024 px scenes is shrunk 8x, and a 30 px
building becomes 4 px, smaller than any anchor and than one cell of the mask head's features.
Nothing fails; the model learns little and the campaign's curve stays flat. So training measures
the objects at the model's scale and, where most are smaller than the smallest anchor, warns with
the input size (or the anchors) that would keep them visible.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from taudis.model.images import output_size

# The suggested input brings the median object to this many times the smallest anchor.
TARGET_ANCHOR_MULTIPLE = 2.0
# Input sides a suggestion is rounded up to (the FPN's coarsest stride).
SIZE_STEP = 32


@dataclass(frozen=True)
class ObjectScale:
    """Objects of a COCO dataset as the model sees them (sides are sqrt(box width x height), px)."""

    objects: int
    median_image_short_side: float  # before resizing
    median_resize: float  # the model's input size / the image's size, median over images
    median_side: float  # median object side after resizing
    smallest_anchor: float
    suggested_opts: str  # config overrides that would keep the objects visible; "" when they are

    def problem(self) -> str | None:
        """What is wrong, in words a user can act on, or None."""
        if not self.suggested_opts:
            return None
        return (
            f"the median object is {self.median_side:.1f} px across once images are resized for the model "
            f"(x{self.median_resize:.2f}: images of {self.median_image_short_side:.0f} px on the short side), "
            f"smaller than the smallest anchor ({self.smallest_anchor:g} px), so the model will find and outline "
            f"most objects poorly; try the config overrides {self.suggested_opts!r} "
            "(training time grows with the input's area)"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    data: Mapping[str, Any], short_edge: int, max_size: int, anchors: Sequence[Sequence[float]]
) -> ObjectScale | None:
    """The objects of COCO ``data`` at an input of ``short_edge`` / ``max_size`` with ``anchors``
    (``MODEL.ANCHOR_GENERATOR.SIZES``: sizes per feature level); None without any object."""
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in data["images"]}
    resize = {i: output_size(h, w, short_edge, max_size)[0] / h for i, (h, w) in sizes.items() if h > 0 and w > 0}
    sides = [
        math.sqrt(float(a["bbox"][2]) * float(a["bbox"][3])) * resize[a["image_id"]]
        for a in data["annotations"]
        if not a.get("iscrowd") and a.get("image_id") in resize and len(a.get("bbox") or ()) == 4
    ]
    if not sides or not resize:
        return None
    median_side = statistics.median(sides)
    short_side = statistics.median(min(hw) for hw in sizes.values())
    median_resize = statistics.median(resize.values())
    smallest_anchor = min(float(size) for level in anchors for size in level)
    return ObjectScale(
        objects=len(sides),
        median_image_short_side=round(short_side, 1),
        median_resize=round(median_resize, 4),
        median_side=round(median_side, 2),
        smallest_anchor=smallest_anchor,
        suggested_opts=_suggestion(median_side, median_resize, short_edge, max_size, anchors),
    )


def for_config(data: Mapping[str, Any], cfg: Any) -> ObjectScale | None:
    """:func:`measure` at a detectron2 config's test input size and smallest anchor."""
    return measure(data, int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST), cfg.MODEL.ANCHOR_GENERATOR.SIZES)


def _suggestion(
    median_side: float, resize: float, short_edge: int, max_size: int, anchors: Sequence[Sequence[float]]
) -> str:
    """Overrides that bring the median object to TARGET_ANCHOR_MULTIPLE anchors, or "" if it is one already.

    A larger input is the first remedy, up to the images' own size (more gives the model nothing
    new); objects small at full size need smaller anchors too.
    """
    anchor = min(float(size) for level in anchors for size in level)
    if median_side >= anchor:
        return ""
    wanted = short_edge * TARGET_ANCHOR_MULTIPLE * anchor / median_side
    full = short_edge / resize  # the input size that reads the median image at its own size
    edge = _step_up(min(wanted, max(full, short_edge)))
    longest = _step_up(max_size * edge / short_edge)
    opts = (
        f"INPUT.MIN_SIZE_TRAIN ({edge},) INPUT.MIN_SIZE_TEST {edge} "
        f"INPUT.MAX_SIZE_TRAIN {longest} INPUT.MAX_SIZE_TEST {longest}"
    )
    if edge > short_edge and median_side * edge / short_edge >= anchor:
        return opts
    # Even at full size the median object is under one anchor: halve the anchors until it is not.
    shrink = 2 ** math.ceil(math.log2(anchor / (median_side * edge / short_edge)))
    smaller = ",".join("[" + ",".join(f"{max(1.0, float(s) / shrink):g}" for s in level) + "]" for level in anchors)
    return (opts + " " if edge > short_edge else "") + f"MODEL.ANCHOR_GENERATOR.SIZES [{smaller}]"


def _step_up(value: float) -> int:
    return int(math.ceil(value / SIZE_STEP) * SIZE_STEP)
